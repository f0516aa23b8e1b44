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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if runs("salesforce") {
        rt.block_on(salesforce::run());
    }
    if runs("hubspot") {
        rt.block_on(hubspot::run());
    }
}
