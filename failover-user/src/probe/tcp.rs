//! TCP check: healthy when a connection is established.

use super::*;

/// Healthy when a TCP connection to `addr` is established.
pub(super) async fn tcp_check(addr: SocketAddr) -> Check {
    TcpStream::connect(addr).await.map_err(|e| io_detail(&e))?;
    Ok("connected".to_string())
}
