//! A private nats-server for tests that need one of their own, started
//! with this repository's bus configuration (`deploy/nats/nats.conf`: one
//! user per service, least privilege) on a free loopback port, with its own
//! JetStream store. Debian's nats-server (`scripts/services.sh` installs
//! it) is enough: the configuration uses nothing newer than 2.9.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::config::NatsArgs;

/// Debian's nats-server (outside `PATH` for a normal user), else the one
/// on `PATH`.
pub fn executable() -> &'static str {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nats-server")
}

/// The users of `deploy/nats/nats.conf` and the environment variable that
/// holds each one's password.
pub const BUS_USERS: &[(&str, &str)] = &[
    ("api", "NATS_API_PASSWORD"),
    ("webhook-ingress", "NATS_INGRESS_PASSWORD"),
    ("dispatch-worker", "NATS_DISPATCH_PASSWORD"),
    ("automation-worker", "NATS_AUTOMATION_PASSWORD"),
    ("runtime", "NATS_RUNTIME_PASSWORD"),
];

/// A running nats-server with the bus configuration; stopped (and its store
/// removed) on drop.
pub struct SecuredNats {
    child: Child,
    store: PathBuf,
    pub port: u16,
    passwords: HashMap<&'static str, String>,
}

impl SecuredNats {
    /// Starts the server and waits (bounded) until `api` can connect. A
    /// server that exits at once (its free port taken in the meantime by a
    /// test running beside it) is started again on another port.
    ///
    /// # Panics
    /// When nats-server cannot be started: a test set-up error.
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// [`Self::start`] with `extra` appended to the configuration (server
    /// limits such as `max_payload`).
    ///
    /// # Panics
    /// When nats-server cannot be started: a test set-up error.
    pub async fn start_with(extra: &str) -> Self {
        // The NATS client builds its TLS settings even for nats:// URLs.
        crate::install_crypto_providers();
        let passwords: HashMap<&'static str, String> = BUS_USERS
            .iter()
            // nats-server parses a variable's value as a config value: one
            // that starts with a digit would be read as a number.
            .map(|(user, _)| (*user, format!("p{}", uuid::Uuid::new_v4().simple())))
            .collect();
        let mut last_error = String::new();
        for _ in 0..3 {
            let mut server = Self::spawn(passwords.clone(), extra);
            let args = server.args("api");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            let mut up = false;
            while !up
                && tokio::time::Instant::now() < deadline
                && matches!(server.child.try_wait(), Ok(None))
            {
                up = crate::nats::connect_options(&args, "api")
                    .await
                    .expect("options")
                    .connect(server.url())
                    .await
                    .is_ok();
                if !up {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            match server.child.try_wait() {
                Ok(None) if up => return server,
                status => {
                    last_error = format!(
                        "port {} ({status:?}): {} {}",
                        server.port,
                        std::fs::read_to_string(server.store.with_extension("log"))
                            .unwrap_or_default(),
                        std::fs::read_to_string(server.store.with_extension("err"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        panic!("the secured nats-server did not start: {last_error}");
    }

    fn spawn(passwords: HashMap<&'static str, String>, extra: &str) -> Self {
        let port = super::free_port();
        let store = std::env::temp_dir().join(format!("vcp-nats-{}", uuid::Uuid::new_v4()));
        let mut config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/nats.conf");
        if !extra.is_empty() {
            let shipped = std::fs::read_to_string(&config).expect("deploy/nats/nats.conf");
            config = store.with_extension("conf");
            std::fs::write(&config, format!("{shipped}\n{extra}\n")).expect("write config");
        }
        let mut command = Command::new(executable());
        command
            .arg("-c")
            .arg(&config)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .arg("-l")
            .arg(store.with_extension("log"))
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(store.with_extension("err"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            );
        for (user, variable) in BUS_USERS {
            command.env(variable, &passwords[user]);
        }
        let child = command
            .spawn()
            .expect("nats-server (scripts/services.sh installs it)");
        Self {
            child,
            store,
            port,
            passwords,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The password of `user`.
    ///
    /// # Panics
    /// When `user` is not one of [`BUS_USERS`].
    pub fn password(&self, user: &str) -> String {
        self.passwords
            .get(user)
            .cloned()
            .unwrap_or_else(|| panic!("{user} is not a bus user"))
    }

    /// The NATS settings a service run as `user` takes (no subject prefix:
    /// the configuration names the production subjects).
    pub fn args(&self, user: &str) -> NatsArgs {
        NatsArgs {
            nats_user: Some(user.to_owned()),
            nats_password: Some(self.password(user)),
            ..NatsArgs::plain(&self.url(), "")
        }
    }
}

impl Drop for SecuredNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.store);
        let _ = std::fs::remove_file(self.store.with_extension("log"));
        let _ = std::fs::remove_file(self.store.with_extension("err"));
        let _ = std::fs::remove_file(self.store.with_extension("conf"));
    }
}
