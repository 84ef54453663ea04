//! Helpers for end-to-end tests: each test gets a sandbox folder (its own SQLite file and
//! plugin folder) and runs the real `celeriac` binary in it.
//!
//! `make test` sets `CELERIAC_BIN` and `CELERIAC_PLUGIN_DIR`; without them the release
//! build under `$CARGO_TARGET_DIR` (or `./target`) is used.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The `celeriac` binary under test.
pub fn bin() -> PathBuf {
    std::env::var_os("CELERIAC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("release/celeriac"))
}

/// A first-party plugin built by `make plugins`.
pub fn plugin(name: &str) -> PathBuf {
    let dir = std::env::var_os("CELERIAC_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("plugins"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: run `make plugins`", path.display());
    path
}

/// A private folder with its own plugin folder, and its own broker and backend: a SQLite
/// file in the folder by default, or the real Redis under a key prefix of its own.
pub struct Sandbox {
    dir: tempfile::TempDir,
    broker: Option<String>,
    backend: Option<String>,
    global_options: Vec<String>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("plugins.d")).expect("plugin dir");
        Sandbox {
            dir,
            broker: None,
            backend: None,
            global_options: Vec::new(),
        }
    }

    /// A sandbox on the real Redis (127.0.0.1:6379), isolated by a fresh `global_keyprefix`
    /// (results are keyed by task id, which is unique anyway).
    pub fn redis() -> Sandbox {
        Sandbox::redis_at("redis://127.0.0.1:6379/0")
    }

    /// [`Sandbox::redis`] on the Redis server at `url`, broker and backend alike.
    pub fn redis_at(url: &str) -> Sandbox {
        let mut sandbox = Sandbox::new();
        sandbox.broker = Some(url.to_owned());
        sandbox.backend = Some(url.to_owned());
        let prefix = sandbox
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        sandbox.global_options = vec![
            "--broker-transport-option".into(),
            format!("global_keyprefix=celeriac-test-{prefix}:"),
        ];
        sandbox
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn plugins(&self) -> PathBuf {
        self.path().join("plugins.d")
    }

    /// The embedded database URL (absolute: four slashes, as SQLAlchemy reads it).
    pub fn db_url(&self) -> String {
        format!("sqlite:///{}", self.path().join("celeriac.db").display())
    }

    /// Copy a plugin into the plugin folder under `file_name`, atomically.
    pub fn install(&self, plugin_path: &Path, file_name: &str) {
        let tmp = self.path().join(format!(".{file_name}.tmp"));
        std::fs::copy(plugin_path, &tmp).expect("copy plugin");
        std::fs::rename(&tmp, self.plugins().join(file_name)).expect("install plugin");
    }

    /// A `celeriac` command run inside the sandbox, on its database.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.current_dir(self.path())
            .env_remove("CELERY_BROKER_URL")
            .env_remove("CELERY_RESULT_BACKEND")
            .env("CELERIAC_CACHE_DIR", target_dir().join("test-cache"))
            .args(["--broker", &self.broker.clone().unwrap_or_else(|| self.db_url())])
            .args([
                "--result-backend",
                &self.backend.clone().unwrap_or_else(|| self.db_url()),
            ])
            .args(&self.global_options)
            .args(args);
        cmd
    }

    /// Run `celeriac ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run celeriac")
    }

    /// Start a worker on the sandbox's plugin folder and wait until it is consuming.
    pub fn worker(&self, extra: &[&str]) -> WorkerProcess {
        let log = self.path().join(format!("worker-{}.log", next_worker_number()));
        let file = std::fs::File::create(&log).expect("log file");
        let plugins = self.plugins();
        let mut args = vec!["worker", "--plugins", plugins.to_str().expect("utf-8 path"), "-c", "2"];
        args.extend_from_slice(extra);
        let child = self
            .command(&args)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start worker");
        let worker = WorkerProcess { child, log };
        worker.wait_for_log("celeriac worker ready", Duration::from_secs(60));
        worker
    }
}

fn next_worker_number() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A running worker; killed when dropped.
pub struct WorkerProcess {
    pub child: Child,
    log: PathBuf,
}

impl WorkerProcess {
    /// Everything the worker logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log contains `text`; panic with the log after `timeout`.
    pub fn wait_for_log(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(text) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("worker never logged {text:?}; log:\n{}", self.log());
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Wait for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private Redis 6.0 server (Debian 11's, which `make services` unpacks under the target
/// folder; `CELERIAC_REDIS_6_0` names another) on a free port; stopped when dropped.
pub struct OldRedis {
    child: Child,
    port: u16,
}

impl OldRedis {
    pub fn start() -> OldRedis {
        let server = std::env::var_os("CELERIAC_REDIS_6_0")
            .map(PathBuf::from)
            .unwrap_or_else(|| target_dir().join("redis-6.0/redis-server"));
        assert!(server.exists(), "{} is missing: run `make services`", server.display());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&server)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start Redis 6.0");
        let server = OldRedis { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "Redis 6.0 did not come up on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for OldRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// stdout of a finished command, trimmed.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// stderr of a finished command, trimmed.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).trim().to_owned()
}
