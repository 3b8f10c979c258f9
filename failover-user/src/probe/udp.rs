//! UDP check: a datagram out, optionally an expected answer back.

use super::*;

/// One datagram out, the first reply judged.
pub(super) async fn udp_check(addr: SocketAddr, payload: &[u8], expect: Option<&[u8]>) -> Check {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| udp_error("bind", &e))?;
    socket
        .connect(addr)
        .await
        .map_err(|e| udp_error("connect", &e))?;
    socket
        .send(payload)
        .await
        .map_err(|e| udp_error("send", &e))?;
    let mut buf = vec![0u8; UDP_MAX_DATAGRAM];
    let n = socket
        .recv(&mut buf)
        .await
        .map_err(|e| udp_error("recv", &e))?;
    match expect {
        Some(want) if !contains(&buf[..n], want) => Err(format!(
            "udp reply lacks {:?}",
            clip(&String::from_utf8_lossy(want))
        )),
        _ => Ok("udp reply".to_string()),
    }
}

/// The detail for a failed UDP socket operation.
pub(super) fn udp_error(op: &str, e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        "connection refused (port unreachable)".to_string()
    } else {
        format!("udp {op}: {}", io_detail(e))
    }
}
