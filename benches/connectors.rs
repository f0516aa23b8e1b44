//! Loopback throughput of the simulators and connectors, one JSON object per
//! line: `cargo bench --bench connectors [-- <system>…]`.
//! Each system lives in `benches/connectors/<system>.rs`.

#[path = "connectors/hubspot.rs"]
mod hubspot;
#[path = "connectors/salesforce.rs"]
mod salesforce;

fn main() {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let runs = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    // Each system gets a runtime of its own, shut down before the next one
    // starts: dropping a runtime drops its tasks, so a finished simulator's
    // connection tasks, and the store they keep alive, are freed here rather
    // than on the workers of the next system's measurements.
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime")
    };
    if runs("salesforce") {
        runtime().block_on(salesforce::run());
    }
    if runs("hubspot") {
        runtime().block_on(hubspot::run());
    }
}
