//! `--address-file`: where a process tells whoever started it which ports it bound (port 0
//! picks a free one), as one JSON object `{"grpc": "127.0.0.1:40123", …}`. The runners
//! (through the kit), the controller and the test runner's bare server all write it here,
//! the same way: a stale file from an earlier run removed before binding, and the new one
//! written beside the path and renamed onto it, so a reader never sees it half-written.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// Removes a file left by an earlier run (none there is fine): called before binding, so
/// a reader waiting for the file cannot take the old run's ports for this one's.
pub fn clear(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        removed => removed,
    }
}

/// Writes `{name: address, …}` to `path` (through `path.tmp`, renamed onto it). An
/// unspecified address (`0.0.0.0`, `[::]`) is written as the loopback of its family: the
/// address a local reader can dial.
pub fn write(path: &Path, addresses: &[(&str, SocketAddr)]) -> std::io::Result<()> {
    let fields: Vec<String> = addresses
        .iter()
        .map(|(name, address)| format!("\"{name}\":\"{}\"", reachable(*address)))
        .collect();
    let mut partial = path.as_os_str().to_owned();
    partial.push(".tmp");
    let partial = PathBuf::from(partial);
    std::fs::write(&partial, format!("{{{}}}", fields.join(",")))?;
    std::fs::rename(&partial, path)
}

fn reachable(address: SocketAddr) -> SocketAddr {
    let ip = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, address.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the tests' readers parse: exactly the keys given, reachable addresses, no
    /// `.tmp` left behind; and a stale file is removed (a missing one is no error).
    #[test]
    fn the_file_names_each_port_reachably_appears_whole_and_is_cleared() {
        let folder = std::env::temp_dir().join(format!(
            "plugworker-address-file-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&folder).unwrap();
        let path = folder.join("addresses.json");
        write(
            &path,
            &[
                ("grpc", "0.0.0.0:5001".parse().unwrap()),
                ("health", "127.0.0.1:5002".parse().unwrap()),
                ("metrics", "[::]:5003".parse().unwrap()),
            ],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            r#"{"grpc":"127.0.0.1:5001","health":"127.0.0.1:5002","metrics":"[::1]:5003"}"#
        );
        write(&path, &[("health", "127.0.0.1:6001".parse().unwrap())]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            r#"{"health":"127.0.0.1:6001"}"#
        );
        let left: Vec<_> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("addresses.json")]);
        clear(&path).unwrap();
        assert!(!path.exists());
        clear(&path).unwrap();
        std::fs::remove_dir_all(&folder).unwrap();
    }
}
