//! `pgtrail hosts`.

use pgtrail_proto::pb;
use serde_json::json;

use super::{opt_time, scope};
use crate::args::Scope;
use crate::client;
use crate::output::{render, Format, Row};

const COLUMNS: &[&str] = &[
    "host",
    "instance",
    "port",
    "version",
    "max_connections",
    "first_sample",
    "last_sample",
    "samples",
    "dropped",
];

pub async fn run(server: &str, s: &Scope, format: Format) -> anyhow::Result<String> {
    let mut client = client::connect(server).await?;
    let reply = client
        .hosts(pb::HostsRequest { scope: scope(s) })
        .await
        .map_err(client::status)?
        .into_inner();
    let rows: Vec<Row> = reply.instances.into_iter().map(row).collect();
    Ok(render(&rows, COLUMNS, format))
}

fn row(i: pb::InstanceSummary) -> Row {
    let f = i.facts.unwrap_or_default();
    let v = json!({
        "host": i.host,
        "instance": i.instance,
        "port": (f.port != 0).then_some(f.port),
        "version": version(f.version_num),
        "version_num": (f.version_num != 0).then_some(f.version_num),
        "max_connections": f.max_connections,
        "superuser_reserved_connections": f.superuser_reserved_connections,
        "system_identifier": f.system_identifier.map(|s| s.to_string()),
        "data_directory": f.data_directory,
        "first_sample": opt_time(i.first_sample_us),
        "last_sample": opt_time(i.last_sample_us),
        "samples": i.samples,
        "dropped": i.dropped,
    });
    v.as_object().expect("object").clone()
}

/// `150004` as `15.4`, `90624` as `9.6.24`.
fn version(num: u32) -> Option<String> {
    match num {
        0 => None,
        n if n >= 100_000 => Some(format!("{}.{}", n / 10_000, n % 10_000)),
        n => Some(format!("{}.{}.{}", n / 10_000, n / 100 % 100, n % 100)),
    }
}
