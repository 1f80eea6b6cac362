//! Opening the benchmark's gRPC connections and, for `--target-leader`, finding the
//! leader the way etcd's benchmark does: ask the endpoints' `Maintenance.Status` in turn
//! until one names a leader (its `leader` member ID), then use that member's client URLs
//! from the same endpoint's `Cluster.MemberList`.
//!
//! Two kinds of connection: [`grpc_connections`] ([`GrpcConnection`], the benchmark's
//! own lean client) for the request/response workloads, [`channels`] (tonic) for the
//! streaming ones. Either way, with several endpoints each connection spreads its
//! requests over all of them (one HTTP/2 connection per endpoint), like etcd's clientv3
//! balancer.

use std::time::Duration;

use skiff_etcd_proto::etcdserverpb::{
    cluster_client::ClusterClient, maintenance_client::MaintenanceClient, MemberListRequest,
    StatusRequest,
};
use tonic::transport::{Channel, Endpoint};

use super::grpc::GrpcConnection;
use super::{BenchError, ConnectionConfig};

/// Turns `host:port` or `http://host:port` into a URI tonic can dial. TLS (`https://`)
/// is not supported yet.
pub fn endpoint_uri(endpoint: &str) -> Result<String, BenchError> {
    let invalid = |reason: &str| BenchError::InvalidFlag {
        flag: "--endpoints",
        reason: format!("{endpoint:?}: {reason}"),
    };
    let trimmed = endpoint.trim();
    if trimmed.is_empty() {
        return Err(invalid("empty endpoint"));
    }
    let uri = if trimmed.starts_with("http://") {
        trimmed.to_string()
    } else if trimmed.contains("://") {
        return Err(invalid("only plain http:// endpoints are supported"));
    } else {
        format!("http://{trimmed}")
    };
    let parsed: tonic::codegen::http::Uri = uri.parse().map_err(|_| invalid("not a host:port"))?;
    if parsed.port_u16().is_none() {
        return Err(invalid("missing port"));
    }
    Ok(uri)
}

fn endpoint(uri: &str, dial_timeout: Duration) -> Result<Endpoint, BenchError> {
    Ok(Endpoint::from_shared(uri.to_string())
        .map_err(|error| BenchError::Connect {
            endpoint: uri.to_string(),
            reason: error.to_string(),
        })?
        .connect_timeout(dial_timeout)
        .tcp_nodelay(true))
}

async fn dial(uri: &str, dial_timeout: Duration) -> Result<Channel, BenchError> {
    endpoint(uri, dial_timeout)?
        .connect()
        .await
        .map_err(|error| BenchError::Connect {
            endpoint: uri.to_string(),
            reason: format!("{error}: {}", source_chain(&error)),
        })
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = String::new();
    let mut source = error.source();
    while let Some(cause) = source {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Finds the leader's client URLs (see the module documentation).
pub async fn find_leader_endpoints(
    uris: &[String],
    dial_timeout: Duration,
) -> Result<Vec<String>, BenchError> {
    let mut failures = Vec::new();
    for uri in uris {
        let channel = match dial(uri, dial_timeout).await {
            Ok(channel) => channel,
            Err(error) => {
                failures.push(error.to_string());
                continue;
            }
        };
        let status = match MaintenanceClient::new(channel.clone())
            .status(StatusRequest {})
            .await
        {
            Ok(response) => response.into_inner(),
            Err(status) => {
                failures.push(format!("{uri}: Status: {}", status.message()));
                continue;
            }
        };
        if status.leader == 0 {
            failures.push(format!("{uri}: knows no leader"));
            continue;
        }
        let members = ClusterClient::new(channel)
            .member_list(MemberListRequest::default())
            .await
            .map_err(|status| BenchError::Setup {
                context: format!("MemberList on {uri}"),
                status: Box::new(status),
            })?
            .into_inner()
            .members;
        let leader = members
            .iter()
            .find(|member| member.id == status.leader)
            .ok_or_else(|| {
                BenchError::LeaderNotFound(format!(
                    "leader {:x} is not in the member list",
                    status.leader
                ))
            })?;
        let leader_uris = leader
            .client_ur_ls
            .iter()
            .map(|url| endpoint_uri(url))
            .collect::<Result<Vec<_>, _>>()?;
        if leader_uris.is_empty() {
            return Err(BenchError::LeaderNotFound(format!(
                "leader {:x} has no client URLs",
                status.leader
            )));
        }
        return Ok(leader_uris);
    }
    Err(BenchError::LeaderNotFound(if failures.is_empty() {
        "no endpoint named a leader".to_string()
    } else {
        failures.join("; ")
    }))
}

/// The endpoints' URIs (`http://host:port`): those given, or with `--target-leader` the
/// leader's client URLs.
pub async fn endpoints(config: &ConnectionConfig) -> Result<Vec<String>, BenchError> {
    let uris = config
        .endpoints
        .iter()
        .map(|endpoint| endpoint_uri(endpoint))
        .collect::<Result<Vec<_>, _>>()?;
    if config.target_leader {
        return find_leader_endpoints(&uris, config.dial_timeout).await;
    }
    Ok(uris)
}

/// Opens `config.conns` tonic channels to `uris` (for the streaming workloads).
pub async fn channels(
    uris: &[String],
    config: &ConnectionConfig,
) -> Result<Vec<Channel>, BenchError> {
    let mut conns = Vec::with_capacity(config.conns);
    for _ in 0..config.conns {
        let channel = if let [only] = uris {
            dial(only, config.dial_timeout).await?
        } else {
            let endpoints = uris
                .iter()
                .map(|uri| endpoint(uri, config.dial_timeout))
                .collect::<Result<Vec<_>, _>>()?;
            Channel::balance_list(endpoints.into_iter())
        };
        conns.push(channel);
    }
    Ok(conns)
}

/// Opens `config.conns` [`GrpcConnection`]s to `uris` (for the request/response
/// workloads).
pub async fn grpc_connections(
    uris: &[String],
    config: &ConnectionConfig,
) -> Result<Vec<GrpcConnection>, BenchError> {
    let mut conns = Vec::with_capacity(config.conns);
    for _ in 0..config.conns {
        conns.push(GrpcConnection::open(uris, config.dial_timeout).await?);
    }
    Ok(conns)
}

#[cfg(test)]
mod tests {
    use super::endpoint_uri;

    #[test]
    fn endpoints_get_a_scheme_and_need_a_port() {
        assert_eq!(
            endpoint_uri("127.0.0.1:2379").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            endpoint_uri(" http://localhost:2379 ").unwrap(),
            "http://localhost:2379"
        );
        assert!(endpoint_uri("127.0.0.1").is_err());
        assert!(endpoint_uri("https://127.0.0.1:2379").is_err());
        assert!(endpoint_uri("").is_err());
    }
}
