//! A scripted MQTT 3.1.1 broker for hostile-peer tests: the test accepts each connection of
//! eddy itself, answers it packet by packet and sees every packet eddy sends on it, so it can
//! send what no real broker would (a PUBLISH whose topic is not UTF-8) and observe exactly
//! which acknowledgement went out on which connection.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A listening fake broker on a free loopback port.
pub struct FakeBroker {
    listener: TcpListener,
}

/// A packet eddy sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPacket {
    /// SUBSCRIBE with its packet id and filters.
    Subscribe { pkid: u16, filters: Vec<String> },
    /// PUBACK of a QoS 1 message.
    PubAck { pkid: u16 },
    /// PINGREQ.
    PingReq,
    /// DISCONNECT.
    Disconnect,
    /// Anything else, by its first byte.
    Other(u8),
}

/// One accepted connection, past its CONNECT.
pub struct FakeConnection {
    stream: TcpStream,
    /// The clean-session flag of the CONNECT.
    pub clean_session: bool,
    /// The client id of the CONNECT.
    pub client_id: String,
}

impl FakeBroker {
    /// Binds a free loopback port.
    pub fn bind() -> anyhow::Result<FakeBroker> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the fake broker")?;
        listener.set_nonblocking(true)?;
        Ok(FakeBroker { listener })
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr())
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound")
    }

    /// Accepts the next connection and reads its CONNECT (no CONNACK yet).
    pub fn accept(&self, timeout: Duration) -> anyhow::Result<FakeConnection> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match self.listener.accept() {
                Ok((stream, _)) => break stream,
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        bail!("no connection within {timeout:?}");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(error) => return Err(error).context("accept"),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut connection = FakeConnection { stream, clean_session: false, client_id: String::new() };
        let (byte1, body) = connection.read_raw()?.context("the client closed before CONNECT")?;
        if byte1 != 0x10 || body.len() < 12 {
            bail!("expected CONNECT, got packet {byte1:#04x}");
        }
        // Protocol name (2 + 4), level, flags, keep-alive, then the client id.
        connection.clean_session = body[7] & 0x02 != 0;
        let id_len = usize::from(u16::from_be_bytes([body[10], body[11]]));
        connection.client_id = String::from_utf8_lossy(&body[12..12 + id_len]).into_owned();
        Ok(connection)
    }
}

impl FakeConnection {
    /// Sends CONNACK (accepted).
    pub fn connack(&mut self, session_present: bool) -> anyhow::Result<()> {
        self.stream.write_all(&[0x20, 2, u8::from(session_present), 0])?;
        Ok(())
    }

    /// Answers a SUBSCRIBE with a SUBACK granting QoS 1 to each filter.
    pub fn suback(&mut self, pkid: u16, n_filters: usize) -> anyhow::Result<()> {
        let mut packet = vec![0x90];
        push_remaining_length(&mut packet, 2 + n_filters);
        packet.extend_from_slice(&pkid.to_be_bytes());
        packet.extend(std::iter::repeat_n(1u8, n_filters));
        self.stream.write_all(&packet)?;
        Ok(())
    }

    /// Writes QoS 1 PUBLISH packets `(pkid, topic bytes, payload, dup)` in one write, so that
    /// the client reads them in one go.
    pub fn publish_all(&mut self, messages: &[(u16, &[u8], &[u8], bool)]) -> anyhow::Result<()> {
        let mut bytes = Vec::new();
        for (pkid, topic, payload, dup) in messages {
            bytes.push(0x32 | if *dup { 0x08 } else { 0 });
            push_remaining_length(&mut bytes, 2 + topic.len() + 2 + payload.len());
            bytes.extend_from_slice(&u16::try_from(topic.len())?.to_be_bytes());
            bytes.extend_from_slice(topic);
            bytes.extend_from_slice(&pkid.to_be_bytes());
            bytes.extend_from_slice(payload);
        }
        self.stream.write_all(&bytes)?;
        Ok(())
    }

    /// The packets the client sends within `wait` (answering PINGREQs); stops early at a
    /// DISCONNECT or when the client closes the connection.
    pub fn read_for(&mut self, wait: Duration) -> anyhow::Result<Vec<ClientPacket>> {
        let deadline = Instant::now() + wait;
        let mut packets = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(packets);
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.read_packet() {
                Ok(Some(ClientPacket::PingReq)) => {
                    self.stream.write_all(&[0xd0, 0])?;
                    packets.push(ClientPacket::PingReq);
                }
                Ok(Some(ClientPacket::Disconnect)) => {
                    packets.push(ClientPacket::Disconnect);
                    return Ok(packets);
                }
                Ok(Some(packet)) => packets.push(packet),
                Ok(None) => return Ok(packets),
                Err(error)
                    if error.downcast_ref::<std::io::Error>().is_some_and(|error| {
                        matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
                    }) =>
                {
                    return Ok(packets)
                }
                Err(error) if is_reset(&error) => return Ok(packets),
                Err(error) => return Err(error),
            }
        }
    }

    /// Reads packets until a SUBSCRIBE, answers it, and returns its filters.
    pub fn expect_subscribe(&mut self) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            self.stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            match self.read_packet()? {
                Some(ClientPacket::Subscribe { pkid, filters }) => {
                    self.suback(pkid, filters.len())?;
                    return Ok(filters);
                }
                Some(ClientPacket::PingReq) => self.stream.write_all(&[0xd0, 0])?,
                Some(_) => {}
                None => bail!("the client closed before subscribing"),
            }
        }
        bail!("no SUBSCRIBE within 10 s")
    }

    /// One packet; `None` when the client closed the connection.
    pub fn read_packet(&mut self) -> anyhow::Result<Option<ClientPacket>> {
        let Some((byte1, body)) = self.read_raw()? else { return Ok(None) };
        let pkid = || body.get(..2).map_or(0, |id| u16::from_be_bytes([id[0], id[1]]));
        Ok(Some(match byte1 {
            0x82 => {
                let mut filters = Vec::new();
                let mut rest = &body[2.min(body.len())..];
                while rest.len() >= 3 {
                    let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    let end = (2 + len).min(rest.len());
                    filters.push(String::from_utf8_lossy(&rest[2..end]).into_owned());
                    rest = &rest[(end + 1).min(rest.len())..];
                }
                ClientPacket::Subscribe { pkid: pkid(), filters }
            }
            0x40 => ClientPacket::PubAck { pkid: pkid() },
            0xc0 => ClientPacket::PingReq,
            0xe0 => ClientPacket::Disconnect,
            other => ClientPacket::Other(other),
        }))
    }

    fn read_raw(&mut self) -> anyhow::Result<Option<(u8, Vec<u8>)>> {
        let mut byte1 = [0u8; 1];
        match self.stream.read(&mut byte1) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(error) => return Err(error.into()),
        }
        let mut remaining = 0usize;
        for shift in [0, 7, 14, 21] {
            let mut byte = [0u8; 1];
            self.stream.read_exact(&mut byte)?;
            remaining |= usize::from(byte[0] & 0x7f) << shift;
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; remaining];
        self.stream.read_exact(&mut body)?;
        Ok(Some((byte1[0], body)))
    }
}

fn is_reset(error: &anyhow::Error) -> bool {
    error.downcast_ref::<std::io::Error>().is_some_and(|error| {
        matches!(error.kind(), ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe)
    })
}

fn push_remaining_length(bytes: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = u8::try_from(len % 128).expect("below 128");
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        bytes.push(byte);
        if len == 0 {
            return;
        }
    }
}
