//! Which local account is at the other end of a loopback TCP connection to the agent, for
//! the history's "who enabled it": the kernel's socket table (`/proc/net/tcp`, `tcp6`) names
//! the owner of the peer's socket, the user database its name.

use std::net::{IpAddr, SocketAddr};

/// The account owning the socket bound to `peer`, if it is on this machine and Linux says.
pub fn of(peer: SocketAddr) -> Option<String> {
    let uid = owner(peer)?;
    Some(name(uid).unwrap_or_else(|| format!("uid {uid}")))
}

fn owner(peer: SocketAddr) -> Option<u32> {
    let wanted = [hex_address(peer, false), hex_address(peer, true)];
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        if let Some(uid) = find(&text, &wanted) {
            return Some(uid);
        }
    }
    None
}

/// The uid column of the line whose local address is one of `wanted`.
fn find(table: &str, wanted: &[Option<String>]) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = fields.get(1)?;
        if !wanted.iter().flatten().any(|w| w == local) {
            return None;
        }
        fields.get(7)?.parse().ok()
    })
}

/// `peer` as the kernel's table writes it: each 32-bit word of the address in the machine's
/// byte order, in hex, then the port. `mapped`: an IPv4 address as `tcp6` holds it
/// (`::ffff:a.b.c.d`).
fn hex_address(peer: SocketAddr, mapped: bool) -> Option<String> {
    let bytes: Vec<u8> = match (peer.ip(), mapped) {
        (IpAddr::V4(v4), false) => v4.octets().to_vec(),
        (IpAddr::V4(v4), true) => v4.to_ipv6_mapped().octets().to_vec(),
        (IpAddr::V6(v6), false) => v6.octets().to_vec(),
        (IpAddr::V6(_), true) => return None,
    };
    let words: String = bytes
        .chunks(4)
        .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
        .collect();
    Some(format!("{words}:{:04X}", peer.port()))
}

fn name(uid: u32) -> Option<String> {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok()??;
    Some(user.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_of_our_own_connection_is_us() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let me = nix::unistd::getuid();
        assert_eq!(owner(peer), Some(me.as_raw()));
        let name = nix::unistd::User::from_uid(me).unwrap().map(|u| u.name);
        assert_eq!(of(peer), Some(name.unwrap_or_else(|| format!("uid {me}"))));
    }

    #[test]
    fn addresses_are_written_as_the_kernel_does() {
        let a: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(hex_address(a, false).unwrap(), "0100007F:1F90");
        }
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 0100007F:0016 01 00000000:00000000 00:00000000 00000000  1000        0 1 1 0\n";
        assert_eq!(find(table, &[hex_address(a, false)]), Some(1000));
    }
}
