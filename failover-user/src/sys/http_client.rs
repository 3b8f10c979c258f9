//! The one outbound HTTP client: webhooks, HTTP probes and the CLI use it.
//! URLs are `http[s]://IP[:PORT]/PATH` (no DNS); TLS through rustls with
//! Mozilla's roots or a CA file.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
};

use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};

/// How an https webhook verifies its server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsOptions {
    /// PEM file of the CA certificates to trust instead of the built-in
    /// (Mozilla) roots.
    pub ca_file: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the url's IP
    /// address).
    pub server_name: Option<String>,
}

/// Whether `url` is an https url (any case).
pub fn is_https(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(s, _)| s.eq_ignore_ascii_case("https"))
}

/// The rustls client configuration for `o`: certificates verified against
/// `ca_file`'s CAs or Mozilla's roots. Errors name the file and what is
/// wrong with it.
pub fn client_config(o: &TlsOptions) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &o.ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(p) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", p.display()))?;
            if certs.is_empty() {
                return Err(format!("{}: no PEM certificate in it", p.display()));
            }
            for c in certs {
                roots.add(c).map_err(|e| format!("{}: {e}", p.display()))?;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The name the certificate is checked against.
pub fn server_name(o: &TlsOptions, ip: IpAddr) -> Result<ServerName<'static>, String> {
    match &o.server_name {
        Some(n) => ServerName::try_from(n.clone()).map_err(|e| format!("server_name {n:?}: {e}")),
        None => Ok(ServerName::IpAddress(ip.into())),
    }
}

/// Validates a webhook URL (used by config validation): returns the socket
/// address, the Host header value and the path (the request target: path and
/// query, never empty), or a clear error message naming what is wrong.
pub fn parse_webhook_url(url: &str) -> Result<(SocketAddr, String, String), String> {
    let bad = |what: String| Err(format!("{url:?}: {what}"));
    if url.is_empty() {
        return Err("empty url: expected http://IP[:PORT]/PATH".into());
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad("not a url: expected http://IP[:PORT]/PATH".into());
    };
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        443
    } else if scheme.eq_ignore_ascii_case("http") {
        80
    } else {
        return bad(format!(
            "unsupported scheme {scheme:?}: use http:// or https://"
        ));
    };
    let (authority, target) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    // A fragment is never sent to the server.
    let target = target.split('#').next().unwrap_or_default();
    let path = if target.starts_with('/') {
        target.to_string()
    } else {
        format!("/{target}")
    };
    if let Some(c) = path.chars().find(|c| !c.is_ascii_graphic()) {
        return bad(format!(
            "the path holds {c:?} (a space, control or non-ASCII character): percent-encode it"
        ));
    }
    if authority.is_empty() {
        return bad("missing host: expected http://IP[:PORT]/PATH".into());
    }
    if authority.contains('@') {
        return bad("credentials in the url (user@) are not supported".into());
    }
    let (ip, port): (IpAddr, Option<&str>) = if let Some(r) = authority.strip_prefix('[') {
        let Some((inside, after)) = r.split_once(']') else {
            return bad("unclosed '[' around the IPv6 host".into());
        };
        if inside.contains('%') {
            return bad("IPv6 zone ids (%...) are not supported".into());
        }
        let Ok(ip) = inside.parse::<Ipv6Addr>() else {
            return bad(format!("{inside:?} is not an IPv6 address"));
        };
        let port = if after.is_empty() {
            None
        } else if let Some(p) = after.strip_prefix(':') {
            Some(p)
        } else {
            return bad(format!("unexpected {after:?} after the IPv6 host"));
        };
        (IpAddr::V6(ip), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if port.is_some_and(|p| p.contains(':')) {
            return bad("an IPv6 host must be in brackets: http://[ADDR]:PORT/PATH".into());
        }
        if host.is_empty() {
            return bad("missing host: expected http://IP[:PORT]/PATH".into());
        }
        let Ok(ip) = host.parse::<Ipv4Addr>() else {
            return bad(format!(
                "host {host:?} is not an IP address: webhook urls take an IP literal (no DNS)"
            ));
        };
        (IpAddr::V4(ip), port)
    };
    if ip.is_unspecified() {
        return bad(format!("{ip} is not a destination address"));
    }
    let port = match port {
        None => default_port,
        Some("") => return bad("empty port after ':'".into()),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return bad(format!("port {p:?} is not a number 1-65535")),
        },
    };
    let host_ip = match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    let host = if port == default_port {
        host_ip
    } else {
        format!("{host_ip}:{port}")
    };
    Ok((SocketAddr::new(ip, port), host, path))
}
