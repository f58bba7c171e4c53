//! A small NETLINK_ROUTE client: the five kinds of messages the agent sends
//! (links, addresses, routes, neighbours, their dumps), encoded and decoded
//! by hand.
//!
//! Why not the rtnetlink crate: it decodes every message type the kernel
//! knows (bonds, tunnels, qdiscs, ...) and cost the static agent 850 KiB,
//! over a quarter of its 3 MiB budget; this costs a few dozen. The format is
//! stable kernel ABI (`<linux/netlink.h>`, `<linux/rtnetlink.h>`): a 16-byte
//! `nlmsghdr`, a fixed family header, then 4-byte aligned `rtattr`s.
//! Requests are synchronous: each is one send and a few receives of
//! microseconds on a socket the call owns.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{self, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType};

#[cfg(test)]
const RTM_NEWLINK: u16 = 16;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_SETLINK: u16 = 19;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_GETADDR: u16 = 22;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_DELROUTE: u16 = 25;
pub const RTM_GETROUTE: u16 = 26;
pub const RTM_NEWNEIGH: u16 = 28;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;

pub const IFLA_ADDRESS: u16 = 1;
pub const IFLA_IFNAME: u16 = 3;
pub const IFLA_MTU: u16 = 4;
pub const IFLA_LINKINFO: u16 = 18;
pub const IFLA_INFO_KIND: u16 = 1;
pub const IFA_ADDRESS: u16 = 1;
pub const IFA_LOCAL: u16 = 2;
pub const RTA_DST: u16 = 1;
pub const RTA_OIF: u16 = 4;
pub const RTA_GATEWAY: u16 = 5;
pub const RTA_PREFSRC: u16 = 7;
pub const RTA_TABLE: u16 = 15;
pub const NDA_DST: u16 = 1;
pub const NDA_LLADDR: u16 = 2;

pub const RT_TABLE_MAIN: u8 = 254;
pub const RTPROT_KERNEL: u8 = 2;
pub const RTPROT_BOOT: u8 = 3;
pub const RTN_UNICAST: u8 = 1;
pub const RT_SCOPE_UNIVERSE: u8 = 0;
pub const RT_SCOPE_LINK: u8 = 253;
pub const NUD_PERMANENT: u16 = 0x80;
pub const IFF_UP: u32 = 0x1;

const HDR: usize = 16;
const RECV_BUF: usize = 64 * 1024;

/// An error the kernel or the socket gave.
#[derive(Debug, thiserror::Error)]
pub enum NlError {
    #[error(transparent)]
    Errno(#[from] nix::Error),
    #[error("malformed netlink reply")]
    Malformed,
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// A request being built: header, family header, attributes.
#[derive(Debug)]
pub struct Request {
    buf: Vec<u8>,
}

impl Request {
    /// `family` is the fixed header after `nlmsghdr` (ifinfomsg, rtmsg, ...).
    pub fn new(kind: u16, flags: u16, family: &[u8]) -> Request {
        let mut buf = vec![0; HDR];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(family);
        buf.resize(align(buf.len()), 0);
        Request { buf }
    }

    pub fn attr(mut self, kind: u16, value: &[u8]) -> Request {
        let len = 4 + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    #[cfg(test)]
    pub fn into_bytes(self) -> Vec<u8> {
        self.finish(0)
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// One message of a reply: its type and what follows the `nlmsghdr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: u16,
    pub body: Vec<u8>,
}

/// One message of a datagram: type, sequence number, body.
type Frame<'a> = (u16, u32, &'a [u8]);

/// Splits a datagram into its messages.
fn split(mut buf: &[u8]) -> Result<Vec<Frame<'_>>, NlError> {
    let mut out = Vec::new();
    while buf.len() >= HDR {
        let len = u32::from_ne_bytes(buf[0..4].try_into().map_err(|_| NlError::Malformed)?) as usize;
        if len < HDR || len > buf.len() {
            return Err(NlError::Malformed);
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let seq = u32::from_ne_bytes(buf[8..12].try_into().map_err(|_| NlError::Malformed)?);
        out.push((kind, seq, &buf[HDR..len]));
        buf = &buf[align(len).min(buf.len())..];
    }
    Ok(out)
}

/// The attributes after a fixed header of `skip` bytes, as (type, value).
pub fn attrs(body: &[u8], skip: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut rest = body.get(align(skip)..).unwrap_or_default();
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        if len < 4 || len > rest.len() {
            break;
        }
        // The top bits flag nesting and byte order; the type is the rest.
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        out.push((kind, &rest[4..len]));
        rest = rest.get(align(len)..).unwrap_or_default();
    }
    out
}

/// A NETLINK_ROUTE socket for one RPC's requests.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    pub fn open() -> Result<Socket, NlError> {
        let fd =
            socket::socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkRoute)?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        Ok(Socket { fd, seq: 0 })
    }

    fn send(&mut self, req: Request) -> Result<u32, NlError> {
        self.seq = self.seq.wrapping_add(1);
        let bytes = req.finish(self.seq);
        socket::sendto(self.fd.as_raw_fd(), &bytes, &NetlinkAddr::new(0, 0), socket::MsgFlags::empty())?;
        Ok(self.seq)
    }

    /// Receives until `done` says the reply to `seq` is complete.
    fn receive(&mut self, seq: u32, mut each: impl FnMut(u16, &[u8]) -> Result<bool, NlError>) -> Result<(), NlError> {
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let n = socket::recv(self.fd.as_raw_fd(), &mut buf, socket::MsgFlags::empty())?;
            for (kind, got, body) in split(&buf[..n])? {
                if got != seq {
                    continue;
                }
                if kind == NLMSG_ERROR {
                    let code = body.get(0..4).ok_or(NlError::Malformed)?;
                    let code = i32::from_ne_bytes(code.try_into().map_err(|_| NlError::Malformed)?);
                    if code != 0 {
                        return Err(NlError::Errno(nix::Error::from_raw(-code)));
                    }
                    return Ok(());
                }
                if kind == NLMSG_DONE || each(kind, body)? {
                    return Ok(());
                }
            }
        }
    }

    /// Every object of a kind: `kind` is a GET type, `family` its fixed header.
    pub fn dump(&mut self, kind: u16, family: &[u8]) -> Result<Vec<Message>, NlError> {
        let seq = self.send(Request::new(kind, NLM_F_DUMP, family))?;
        let mut out = Vec::new();
        self.receive(seq, |kind, body| {
            out.push(Message { kind, body: body.to_vec() });
            Ok(false)
        })?;
        Ok(out)
    }

    /// Sends a change and waits for the kernel's acknowledgement.
    pub fn change(&mut self, req: Request) -> Result<(), NlError> {
        let mut req = req;
        let flags = u16::from_ne_bytes([req.buf[6], req.buf[7]]) | NLM_F_ACK;
        req.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        let seq = self.send(req)?;
        self.receive(seq, |_, _| Ok(false))
    }
}

/// `struct ifinfomsg`.
pub fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// `struct ifaddrmsg`.
pub fn ifaddrmsg(family: u8, prefix_len: u8, index: u32) -> [u8; 8] {
    let mut b = [family, prefix_len, 0, 0, 0, 0, 0, 0];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b
}

/// `struct rtmsg` (with its trailing flags word).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtMsg {
    pub family: u8,
    pub dst_len: u8,
    pub table: u8,
    pub protocol: u8,
    pub scope: u8,
    pub kind: u8,
    pub flags: u32,
}

impl RtMsg {
    pub const LEN: usize = 12;

    pub fn bytes(&self) -> [u8; 12] {
        let mut b = [self.family, self.dst_len, 0, 0, self.table, self.protocol, self.scope, self.kind, 0, 0, 0, 0];
        b[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        b
    }

    pub fn parse(body: &[u8]) -> Option<RtMsg> {
        let b = body.get(..Self::LEN)?;
        Some(RtMsg {
            family: b[0],
            dst_len: b[1],
            table: b[4],
            protocol: b[5],
            scope: b[6],
            kind: b[7],
            flags: u32::from_ne_bytes(b[8..12].try_into().ok()?),
        })
    }
}

/// `struct ndmsg`.
pub fn ndmsg(family: u8, index: u32, state: u16, flags: u8) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = family;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..10].copy_from_slice(&state.to_ne_bytes());
    b[10] = flags;
    b
}

/// The index and flags of an `ifinfomsg` body.
pub fn link_header(body: &[u8]) -> Option<(u32, u32)> {
    let b = body.get(..16)?;
    Some((u32::from_ne_bytes(b[4..8].try_into().ok()?), u32::from_ne_bytes(b[8..12].try_into().ok()?)))
}

/// The family, prefix length and index of an `ifaddrmsg` body.
pub fn addr_header(body: &[u8]) -> Option<(u8, u8, u32)> {
    let b = body.get(..8)?;
    Some((b[0], b[1], u32::from_ne_bytes(b[4..8].try_into().ok()?)))
}

/// An address attribute (4 or 16 bytes).
pub fn ip_of(value: &[u8]) -> Option<std::net::IpAddr> {
    match value.len() {
        4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(value).ok()?)),
        16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(value).ok()?)),
        _ => None,
    }
}

pub fn ip_bytes(ip: std::net::IpAddr) -> Vec<u8> {
    match ip {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// A NUL-terminated string attribute.
pub fn string_of(value: &[u8]) -> String {
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_a_header_a_family_header_and_aligned_attributes() {
        let bytes = Request::new(RTM_NEWADDR, NLM_F_CREATE, &ifaddrmsg(2, 24, 7))
            .attr(IFA_LOCAL, &[10, 0, 2, 15])
            .attr(3, b"eth0\0")
            .finish(9);
        assert_eq!(bytes.len(), 16 + 8 + 8 + 12);
        assert_eq!(u32::from_ne_bytes(bytes[0..4].try_into().expect("4")), bytes.len() as u32);
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), RTM_NEWADDR);
        assert_eq!(u16::from_ne_bytes([bytes[6], bytes[7]]), NLM_F_CREATE | NLM_F_REQUEST);
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().expect("4")), 9);
        assert_eq!(addr_header(&bytes[16..]), Some((2, 24, 7)));
        let a = attrs(&bytes[16..], 8);
        assert_eq!(a, vec![(IFA_LOCAL, &[10u8, 0, 2, 15][..]), (3, &b"eth0\0"[..])]);
        assert_eq!(string_of(a[1].1), "eth0");
        assert_eq!(ip_of(a[0].1), Some("10.0.2.15".parse().expect("ip")));
    }

    #[test]
    fn split_walks_several_messages_and_rejects_bad_lengths() {
        let one = Request::new(RTM_NEWLINK, 0, &ifinfomsg(3, IFF_UP, 0)).attr(IFLA_MTU, &1500u32.to_ne_bytes());
        let mut datagram = one.finish(5);
        datagram.extend(Request::new(NLMSG_DONE, 0, &[0, 0, 0, 0]).finish(5));
        let msgs = split(&datagram).expect("parses");
        assert_eq!(msgs.len(), 2);
        assert_eq!((msgs[0].0, msgs[0].1), (RTM_NEWLINK, 5));
        assert_eq!(link_header(msgs[0].2), Some((3, IFF_UP)));
        assert_eq!(attrs(msgs[0].2, 16), vec![(IFLA_MTU, &1500u32.to_ne_bytes()[..])]);
        assert_eq!(msgs[1].0, NLMSG_DONE);

        let mut bad = datagram.clone();
        bad[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(matches!(split(&bad), Err(NlError::Malformed)));
    }

    #[test]
    fn attrs_stop_at_truncation_and_mask_nesting_bits() {
        let mut body = vec![0u8; 4];
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&(IFLA_LINKINFO | 0x8000).to_ne_bytes());
        body.extend_from_slice(&[1, 2, 3, 4]);
        body.extend_from_slice(&200u16.to_ne_bytes());
        body.extend_from_slice(&1u16.to_ne_bytes());
        assert_eq!(attrs(&body, 4), vec![(IFLA_LINKINFO, &[1u8, 2, 3, 4][..])]);
        assert!(attrs(&[1, 2], 16).is_empty());
    }

    #[test]
    fn rtmsg_round_trips() {
        let m = RtMsg {
            family: 2,
            dst_len: 24,
            table: RT_TABLE_MAIN,
            protocol: RTPROT_BOOT,
            scope: 253,
            kind: 1,
            flags: 4,
        };
        assert_eq!(RtMsg::parse(&m.bytes()), Some(m));
        assert_eq!(RtMsg::parse(&[0; 11]), None);
        let n = ndmsg(2, 4, NUD_PERMANENT, 0);
        assert_eq!((n[0], u32::from_ne_bytes(n[4..8].try_into().expect("4"))), (2, 4));
        assert_eq!(u16::from_ne_bytes([n[8], n[9]]), NUD_PERMANENT);
    }
}
