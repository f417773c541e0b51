//! Connecting to a collector, with errors a user can act on.

use anyhow::Context;
use pgtrail_proto::pb::history_client::HistoryClient;
use tonic::transport::{Channel, Endpoint};

/// A `History` client for `server`.
pub async fn connect(server: &str) -> anyhow::Result<HistoryClient<Channel>> {
    let endpoint = Endpoint::from_shared(server.to_string())
        .ok()
        .filter(|_| server.starts_with("http://") || server.starts_with("https://"))
        .with_context(|| {
            format!("invalid --server {server:?}: expected a URL such as http://127.0.0.1:7070")
        })?
        .connect_timeout(std::time::Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the pgtrail collector at {server} ({}): is `pgtrail record` or pgtrail-collector running there?",
            pgtrail_agent::error_chain(&e)
        )
    })?;
    Ok(HistoryClient::new(channel)
        .max_decoding_message_size(pgtrail_collector::service::MAX_MESSAGE_BYTES))
}

/// A collector's refusal as one line.
pub fn status(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}
