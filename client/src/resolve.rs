//! Turning the `host:port` a user typed into an address to connect to.

use std::net::SocketAddr;

use crate::ClientError;
use crate::login::LoginTarget;

/// The first address `addr` (`host:port`) resolves to.
pub async fn resolve(addr: &str) -> Result<SocketAddr, ClientError> {
    let unreachable = |detail: String| ClientError::Connect {
        addr: addr.to_owned(),
        detail,
    };
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .next()
        .ok_or_else(|| unreachable("no address found".into()))
}

/// The login server: QUIC at `login`, TLS over TCP at `login_tcp` (default:
/// the same address).
pub async fn login_target(
    login: &str,
    login_tcp: Option<&str>,
) -> Result<LoginTarget, ClientError> {
    let target = LoginTarget::new(resolve(login).await?);
    Ok(match login_tcp {
        Some(tcp) => target.with_tcp(resolve(tcp).await?),
        None => target,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_literals_and_names_and_explains_failures() {
        assert_eq!(
            resolve("127.0.0.1:4433").await.unwrap(),
            SocketAddr::from(([127, 0, 0, 1], 4433))
        );
        assert_eq!(resolve("localhost:4433").await.unwrap().port(), 4433);
        let err = resolve("no port").await.unwrap_err();
        assert!(
            matches!(err, ClientError::Connect { ref addr, .. } if addr == "no port"),
            "{err:?}"
        );
    }
}
