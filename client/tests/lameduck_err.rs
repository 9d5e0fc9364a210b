//! Regression test for a bug the soak harness found: a broker in lame duck sends LAMEDUCK, then
//! `ERR server_shutdown` (fatal) at a random moment within its window. When both frames reached
//! the client in one read, the reader handled the whole batch first and the fatal ERR closed the
//! client for good. With reconnect on, the client must reconnect instead.
//!
//! This fake server answers the handshake, then writes LAMEDUCK + ERR server_shutdown in one
//! write on the first connection, and serves later connections normally: the client must report
//! `Reconnected`, never `Closed`.

use std::time::Duration;

use agentwire_client::{ConnectOptions, ConnectionEvent};
use agentwire_protocol::control::{encode_control, LameDuck};
use agentwire_protocol::{decode_frame, encode_err, encode_info, encode_pong, Frame, InfoFrame};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// INFO, then read until the client's PING, answer PONG.
async fn handshake(s: &mut TcpStream, client_id: u64) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    encode_info(
        &mut out,
        &InfoFrame {
            version: 1,
            features: 0,
            max_payload: 1 << 20,
            shard_count: 1,
            shard_id: 0,
            client_id,
            server_id: b"fake",
            nonce: b"",
        },
    )
    .map_err(std::io::Error::other)?;
    s.write_all(&out).await?;
    let mut buf = BytesMut::new();
    loop {
        while let Ok(Some((f, len))) = decode_frame(&buf, 1 << 21) {
            let ping = matches!(f, Frame::Ping);
            buf.advance(len);
            if ping {
                let mut pong = BytesMut::new();
                encode_pong(&mut pong);
                return s.write_all(&pong).await;
            }
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

#[tokio::test]
async fn lameduck_then_server_shutdown_in_one_read_reconnects() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok((mut s, _)) = listener.accept().await {
            n += 1;
            let first = n == 1;
            tokio::spawn(async move {
                if handshake(&mut s, n).await.is_err() {
                    return;
                }
                if first {
                    // Let the client's reader go idle, then both frames in one write.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let mut out = BytesMut::new();
                    let notice = LameDuck {
                        window_ms: 1000,
                        reason: "the server is going away (lame duck)".into(),
                    };
                    encode_control(&mut out, &notice).expect("LAMEDUCK encodes");
                    encode_err(
                        &mut out,
                        14, // server_shutdown
                        true,
                        "lame duck: the server is going away; reconnect to another server",
                    );
                    let _ = s.write_all(&out).await;
                }
                // Keep the connection open (the client must leave by itself).
                tokio::time::sleep(Duration::from_secs(10)).await;
            });
        }
    });
    let client = ConnectOptions::new()
        .reconnect(true)
        .reconnect_delay(Duration::from_millis(10), Duration::from_millis(50))
        .connect(&addr)
        .await
        .expect("connects");
    let mut events = client.events();
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(ev) = events.next().await {
            match ev {
                ConnectionEvent::Reconnected { .. } => return Ok(()),
                ConnectionEvent::Closed { reason } => return Err(reason),
                _ => {}
            }
        }
        Err("event stream ended".to_owned())
    })
    .await
    .expect("an outcome within 5 s");
    assert_eq!(
        outcome,
        Ok(()),
        "the client closed for good instead of reconnecting"
    );
}
