//! A counting OTLP/gRPC trace receiver on a given address, for trying tracing by hand
//! without a collector: `otlp-sink 127.0.0.1:4317` prints the spans received per second.

#[tokio::main]
async fn main() {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4317".into());
    let receiver = plugworker_testkit::otlp::OtlpReceiver::start_counting_on(&address).await;
    eprintln!("otlp-sink: receiving on {}", receiver.endpoint);
    let mut last = 0;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let count = receiver.count();
        if count != last {
            println!("{count} spans ({} in the last second)", count - last);
            last = count;
        }
    }
}
