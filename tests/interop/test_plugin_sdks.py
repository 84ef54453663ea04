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
import zlib
from pathlib import Path

import pytest

from conftest import BIN, PLUGINS, REDIS_HOST, REDIS_PORT, TARGET, celery_app

TIMEOUT = 60


def url(db):
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


@pytest.mark.parametrize("lang", ["python", "js", "c", "rust"])
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
        "rust": ["cargo", "test", "-q", "--manifest-path", folder / "Cargo.toml"],
        "c": ["make", "-C", folder, "test"],
    }[lang]
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


def test_first_party_plugins_in_python_and_c(db, make_worker):
    worker = make_worker(url(db), url(db))
    for name in ("textkit", "hashkit"):
        shutil.copy(PLUGINS / f"{name}.wasm", worker.plugins / f".{name}.tmp")
        os.replace(worker.plugins / f".{name}.tmp", worker.plugins / f"{name}.wasm")
        worker.wait_for_log(f"plugin={name}")
    app = celery_app(url(db), url(db))
    call = lambda task, *args: app.send_task(task, args).get(timeout=TIMEOUT)  # noqa: E731
    text = "Héllo, wörld — héllo"
    assert call("hashkit.crc32", text) == zlib.crc32(text.encode())
    assert call("hashkit.adler32", text) == zlib.adler32(text.encode())
    assert call("textkit.words", text) == {"héllo": 2, "wörld": 1}
    assert call("textkit.slugify", text) == "hello-world-hello"
    with pytest.raises(TypeError):
        call("hashkit.crc32", 42)
