"""Plugins in each language, from `celeriac plugins new` to a call from Python Celery:
scaffold, build, drop into a running worker, call, and see a raised error arrive as the
same exception with its message.

componentize-py comes from the test virtualenv, componentize-js is installed with npm
into the shared cache on first use; Rust plugins build with this machine's cargo into the
shared target folder.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BIN, REDIS_HOST, REDIS_PORT, TARGET, celery_app

TIMEOUT = 60


def url(db):
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


@pytest.mark.parametrize("lang", ["python", "js", "rust"])
def test_a_new_plugin_builds_and_serves_celery(lang, tmp_path, db, make_worker):
    name = f"shout_{lang}"
    subprocess.run([BIN, "plugins", "new", "--lang", lang, name, "--dir", tmp_path], check=True)
    folder = tmp_path / name
    env = dict(
        os.environ,
        CELERIAC_COMPONENTIZE_PY=str(Path(sys.executable).parent / "componentize-py"),
        CELERIAC_CACHE_DIR=str(TARGET / "test-cache"),
    )
    built = subprocess.run([BIN, "plugins", "build", folder], env=env, capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stdout + built.stderr
    assert f"{name}.shout" in built.stdout, "the build checks the component and lists its tasks"
    # The scaffold's own test runs the task functions natively.
    native_test = {
        "python": [sys.executable, "-m", "pytest", "-q", folder],
        "js": ["node", "--test", folder / f"{name}.test.mjs"],
        "rust": None,  # `cargo test` in the folder; not run here, it compiles for the host
    }[lang]
    if native_test:
        tested = subprocess.run(native_test, capture_output=True, text=True)
        assert tested.returncode == 0, tested.stdout + tested.stderr

    worker = make_worker(url(db), url(db))
    shutil.copy(folder / f"{name}.wasm", worker.plugins / f".{name}.tmp")
    os.replace(worker.plugins / f".{name}.tmp", worker.plugins / f"{name}.wasm")
    worker.wait_for_log(f"plugin={name}")
    app = celery_app(url(db), url(db))
    assert app.send_task(f"{name}.shout", ("hello",)).get(timeout=TIMEOUT) == "HELLO!"
    with pytest.raises(ValueError, match="nothing to shout"):
        app.send_task(f"{name}.shout", ("",)).get(timeout=TIMEOUT)
