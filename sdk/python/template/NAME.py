"""{{name}}: a Celeriac plugin in Python. Each @task function is a Celery task named
{{name}}.<function>; arguments and results are JSON. Build with `celeriac plugins build .`"""

from celeriac import Handler, task  # noqa: F401 - Handler is what the worker calls


@task
def shout(text: str) -> str:
    "Upper-case a text, with an exclamation mark."
    if not text:
        raise ValueError("nothing to shout")
    return text.upper() + "!"
