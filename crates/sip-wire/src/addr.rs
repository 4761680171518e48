//! Writing addresses and ports into messages without the `fmt` machinery (`received=`,
//! `rport=`, Contact hosts, CDR sources: several per call on the hot path).

use std::net::{IpAddr, SocketAddr};

/// Appends `n` in decimal.
pub fn push_u16(out: &mut String, n: u16) {
    let mut buf = [0u8; 5];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
}

/// Appends `ip` as its Display writes it.
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v) => {
            for (i, o) in v.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u16(out, o.into());
            }
        }
        IpAddr::V6(v) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v}");
        }
    }
}

/// Appends `a` as its Display writes it: `ip:port`, `[ip]:port` for IPv6.
pub fn push_socket_addr(out: &mut String, a: SocketAddr) {
    if a.is_ipv6() {
        out.push('[');
        push_ip(out, a.ip());
        out.push(']');
    } else {
        push_ip(out, a.ip());
    }
    out.push(':');
    push_u16(out, a.port());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for a in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.0.0.1:5060",
            "127.0.0.1:10",
            "[::1]:5060",
            "[2001:db8::7]:65535",
            "[::ffff:10.0.0.1]:5060",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let mut s = String::from("x");
            push_socket_addr(&mut s, a);
            assert_eq!(s, format!("x{a}"));
            let mut s = String::new();
            push_ip(&mut s, a.ip());
            assert_eq!(s, a.ip().to_string());
        }
    }
}
