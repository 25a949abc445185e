//! Runs one SFTP subsystem channel: a reader task that drains the SSH channel without pause, a
//! bounded queue, and the sequential request handler.
//!
//! Why not `russh_sftp::server::run`: russh grows the SSH window as data *arrives* and then
//! pushes it into a per-channel queue of `channel_buffer_size` messages, blocking its whole
//! session loop while that queue is full. The russh-sftp server handles one request at a time
//! and, to answer, needs that same session loop. A client with many requests in flight (OpenSSH
//! `sftp get` asks for 64 x 255 KiB at once) fills the queue while the handler waits to send
//! an answer: both wait forever (reproduced, see CRATES.md). A larger `channel_buffer_size`
//! only moves the threshold. Here the reader task never waits on the handler: it frames SFTP
//! packets into a queue bounded by [`MAX_QUEUED_PACKETS`] and [`MAX_QUEUED_BYTES`]; a client
//! that pipelines beyond those bounds has its channel closed, which keeps memory bounded
//! without ever blocking the session loop. Own framing also means a malformed length closes
//! the channel instead of desynchronising it.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use russh::ChannelMsg;
use russh::server::Msg;
use russh_sftp::protocol::{Packet, Status, StatusCode};
use russh_sftp::server::{Handler, StatusReply};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::fs::MAX_PACKET_LEN;

/// Requests queued per SFTP session before the session is dropped (OpenSSH sends <= 64).
pub const MAX_QUEUED_PACKETS: usize = 4096;
/// Bytes of requests queued per SFTP session before the session is dropped.
pub const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

struct Queued {
    packet: Bytes,
    permit: OwnedSemaphorePermit,
}

/// Serves SFTP on `channel` until the client closes it. `fs` is confined to the principal root (a local folder,
/// [`super::fs::ConfinedFs`], or a prefix in an object store, [`super::objfs::StoreFs`]).
pub(crate) async fn run<H: Handler<Error = StatusReply> + Send>(channel: russh::Channel<Msg>, fs: H, tenant: String) {
    let (read_half, write_half) = channel.split();
    let (tx, mut rx) = mpsc::channel::<Queued>(MAX_QUEUED_PACKETS);
    let reader = tokio::spawn(drain(read_half, tx, tenant.clone()));
    let mut fs = fs;
    // Once the client is gone, the requests it sent before are still carried out (answers dropped): the writes
    // of a cut upload land, so its resumption sends only what the server never received.
    let mut gone = false;
    while let Some(req) = rx.recv().await {
        let answer = answer(&mut fs, req.packet).await;
        drop(req.permit);
        if gone {
            continue;
        }
        let bytes = match Bytes::try_from(answer) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(tenant = %tenant, "could not encode an sftp answer: {e}");
                break;
            }
        };
        if write_half.data_bytes(bytes).await.is_err() {
            // nothing more is read; what is queued is carried out
            gone = true;
            reader.abort();
        }
    }
    drop(rx);
    reader.abort();
    let _ = write_half.eof().await;
    let _ = write_half.close().await;
    tracing::debug!(tenant = %tenant, "sftp channel closed");
}

/// Moves channel data into the queue as framed SFTP packets, never waiting on the handler.
async fn drain(mut read_half: russh::ChannelReadHalf, tx: mpsc::Sender<Queued>, tenant: String) {
    let budget = Arc::new(Semaphore::new(MAX_QUEUED_BYTES));
    let mut buf = BytesMut::new();
    while let Some(msg) = read_half.wait().await {
        match msg {
            ChannelMsg::Data { data } => {
                buf.extend_from_slice(&data);
                loop {
                    match next_frame(&mut buf) {
                        Ok(Some(packet)) => {
                            let cost = u32::try_from(packet.len().max(64)).unwrap_or(u32::MAX);
                            let Ok(permit) = budget.clone().try_acquire_many_owned(cost) else {
                                tracing::warn!(tenant = %tenant,
                                    "sftp client queued more than {MAX_QUEUED_BYTES} bytes of requests; closing the channel");
                                return;
                            };
                            match tx.try_send(Queued { packet, permit }) {
                                Ok(()) => {}
                                Err(mpsc::error::TrySendError::Full(_)) => {
                                    tracing::warn!(tenant = %tenant,
                                        "sftp client has more than {MAX_QUEUED_PACKETS} requests in flight; closing the channel");
                                    return;
                                }
                                Err(mpsc::error::TrySendError::Closed(_)) => return,
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(tenant = %tenant, "closing the sftp channel: {e}");
                            return;
                        }
                    }
                }
            }
            ChannelMsg::Eof | ChannelMsg::Close => return,
            _ => {}
        }
    }
}

/// Cuts one length-prefixed SFTP packet (without its length) off the front of `buf`.
fn next_frame(buf: &mut BytesMut) -> Result<Option<Bytes>, &'static str> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let mut head = head;
    let len = head.get_u32();
    if len == 0 {
        return Err("the client sent an empty sftp packet");
    }
    if len > MAX_PACKET_LEN {
        return Err("the client sent an sftp packet larger than the advertised limit");
    }
    let total = 4 + len as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(total);
    frame.advance(4);
    Ok(Some(frame.freeze()))
}

/// The request id of a raw packet (0 for INIT or a packet too short to have one).
fn request_id(raw: &[u8]) -> u32 {
    raw.get(1..5).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_be_bytes).unwrap_or(0)
}

fn status(id: u32, reply: StatusReply) -> Packet {
    let StatusReply { status_code, error_message, language_tag } = reply;
    Packet::Status(Status {
        id,
        status_code,
        error_message: error_message.unwrap_or_else(|| status_code.to_string()),
        language_tag: language_tag.unwrap_or_else(|| "en-US".to_owned()),
    })
}

macro_rules! call {
    ($fs:expr, $id:expr, $method:ident ( $($arg:expr),* )) => {
        match $fs.$method($($arg),*).await {
            Ok(ok) => Packet::from(ok),
            Err(e) => status($id, e),
        }
    };
}

/// Decodes one request, runs it, and returns the answer packet.
async fn answer<H: Handler<Error = StatusReply> + Send>(fs: &mut H, raw: Bytes) -> Packet {
    let id = request_id(&raw);
    // request types 1..=20 and 200 (extended); anything else is unsupported, not malformed
    let known = matches!(raw.first(), Some(1..=20) | Some(200));
    if !known {
        return status(id, StatusCode::OpUnsupported.with_message("unknown sftp request type"));
    }
    let mut raw = raw;
    let packet = match Packet::try_from(&mut raw) {
        Ok(p) => p,
        Err(e) => {
            return status(id, StatusCode::BadMessage.with_message(format!("malformed sftp request: {e}")));
        }
    };
    match packet {
        Packet::Init(p) => call!(fs, 0, init(p.version, p.extensions)),
        Packet::Open(p) => call!(fs, p.id, open(p.id, p.filename, p.pflags, p.attrs)),
        Packet::Close(p) => call!(fs, p.id, close(p.id, p.handle)),
        Packet::Read(p) => call!(fs, p.id, read(p.id, p.handle, p.offset, p.len)),
        Packet::Write(p) => call!(fs, p.id, write(p.id, p.handle, p.offset, p.data)),
        Packet::Lstat(p) => call!(fs, p.id, lstat(p.id, p.path)),
        Packet::Fstat(p) => call!(fs, p.id, fstat(p.id, p.handle)),
        Packet::SetStat(p) => call!(fs, p.id, setstat(p.id, p.path, p.attrs)),
        Packet::FSetStat(p) => call!(fs, p.id, fsetstat(p.id, p.handle, p.attrs)),
        Packet::OpenDir(p) => call!(fs, p.id, opendir(p.id, p.path)),
        Packet::ReadDir(p) => call!(fs, p.id, readdir(p.id, p.handle)),
        Packet::Remove(p) => call!(fs, p.id, remove(p.id, p.filename)),
        Packet::MkDir(p) => call!(fs, p.id, mkdir(p.id, p.path, p.attrs)),
        Packet::RmDir(p) => call!(fs, p.id, rmdir(p.id, p.path)),
        Packet::RealPath(p) => call!(fs, p.id, realpath(p.id, p.path)),
        Packet::Stat(p) => call!(fs, p.id, stat(p.id, p.path)),
        Packet::Rename(p) => call!(fs, p.id, rename(p.id, p.oldpath, p.newpath)),
        Packet::ReadLink(p) => call!(fs, p.id, readlink(p.id, p.path)),
        Packet::Symlink(p) => call!(fs, p.id, symlink(p.id, p.linkpath, p.targetpath)),
        Packet::Extended(p) => match fs.extended(p.id, p.request, p.data).await {
            Ok(packet) => packet,
            Err(e) => status(p.id, e),
        },
        _ => status(id, StatusCode::BadMessage.with_message("this packet type is not a request")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_at_their_length() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0, 0, 0, 3, 1, 2, 3, 0, 0]);
        assert_eq!(next_frame(&mut buf).unwrap().unwrap().as_ref(), &[1, 2, 3]);
        assert!(next_frame(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&[0, 1, 9]);
        assert_eq!(next_frame(&mut buf).unwrap().unwrap().as_ref(), &[9]);
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_lengths_are_refused() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert!(next_frame(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
        assert!(next_frame(&mut buf).is_err());
    }

    #[test]
    fn request_id_tolerates_short_packets() {
        assert_eq!(request_id(&[]), 0);
        assert_eq!(request_id(&[3, 0, 0]), 0);
        assert_eq!(request_id(&[3, 0, 0, 1, 2]), 258);
    }
}
