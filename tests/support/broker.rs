//! A Kafka broker of one test's own, from the jars `dev/services` installed
//! (`EXTSYNC_KAFKA_LIB`), for tests that stop and restart the broker: the
//! shared broker keeps serving every other test meanwhile.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A single-node KRaft broker on free loopback ports, its data in a
/// directory of its own that survives a restart.
pub struct PrivateBroker {
    dir: PathBuf,
    pub brokers: String,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .unwrap()
        .port()
}

fn java(lib: &str, log4j: &Path) -> Command {
    let mut c = Command::new("java");
    c.arg("-Xms128m")
        .arg("-Xmx384m")
        .arg("-XX:+UseG1GC")
        .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
        .arg("-cp")
        .arg(format!("{lib}/*"));
    c
}

impl PrivateBroker {
    /// Formats the broker's storage and starts it; returns once it answers.
    pub fn start() -> PrivateBroker {
        let lib = super::setting("EXTSYNC_KAFKA_LIB");
        let dir = std::env::temp_dir().join(super::unique("broker"));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let (port, controller) = (free_port(), free_port());
        std::fs::write(
            dir.join("server.properties"),
            format!(
                "process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
num.partitions=2
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
",
                data = dir.join("data").display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("log4j2.yaml"),
            "Configuration:\n  Appenders:\n    Console:\n      name: STDOUT\n      PatternLayout:\n        Pattern: \"[%d] %p %m (%c)%n\"\n  Loggers:\n    Root:\n      level: WARN\n      AppenderRef:\n        - ref: STDOUT\n",
        )
        .unwrap();
        let cluster = {
            let b = uuid::Uuid::new_v4().into_bytes();
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
        };
        let formatted = java(&lib, &dir.join("log4j2.yaml"))
            .args(["kafka.tools.StorageTool", "format", "-t", &cluster, "-c"])
            .arg(dir.join("server.properties"))
            .stdout(Stdio::null())
            .status()
            .expect("java runs");
        assert!(
            formatted.success(),
            "formatting the private broker's storage"
        );
        let mut b = PrivateBroker {
            dir,
            brokers: format!("127.0.0.1:{port}"),
            child: None,
        };
        b.restart();
        b
    }

    /// Starts the broker (again, on the same data); returns once it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the broker runs already");
        let lib = super::setting("EXTSYNC_KAFKA_LIB");
        let log = std::fs::File::create(self.dir.join("kafka.log")).unwrap();
        let child = java(&lib, &self.dir.join("log4j2.yaml"))
            .arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("java runs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        while std::net::TcpStream::connect(&self.brokers).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the private broker exited ({status}): {}",
                    std::fs::read_to_string(self.dir.join("kafka.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the private broker did not answer within 90 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the broker cleanly (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
