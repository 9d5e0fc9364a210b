//! A bare data plane (`agentwire_broker::start`: no admin plane, so no control plane): messages
//! are routed as usual, and every control-plane frame (REGISTER, HEARTBEAT, DEREGISTER,
//! DISCOVER) is answered with `ERR unknown_op` naming the missing control plane, without closing
//! the connection and without losing the client's other traffic.

mod common;

use agentwire_protocol::control::{encode_control, Discover, Heartbeat, Registration};
use agentwire_protocol::{op, ErrorCode, Frame};
use bytes::BytesMut;
use common::{config, start, Raw};

fn code(c: ErrorCode) -> u16 {
    c.as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frames_are_refused_and_messages_still_flow() {
    let h = start(config(2));
    let addr = h.local_addr();
    let mut sub = Raw::connect(addr).await;
    sub.sub(1, "jobs.*", "").await;
    sub.ping_pong().await;
    let mut client = Raw::connect(addr).await;

    let mut frames = Vec::new();
    let mut b = BytesMut::new();
    encode_control(
        &mut b,
        &Registration {
            component: "planner".into(),
            instance_id: "p-1".into(),
            ..Registration::default()
        },
    )
    .expect("encode REGISTER");
    frames.push((op::REGISTER, b.split()));
    encode_control(&mut b, &Heartbeat::default()).expect("encode HEARTBEAT");
    frames.push((op::HEARTBEAT, b.split()));
    encode_control(&mut b, &Discover::default()).expect("encode DISCOVER");
    frames.push((op::DISCOVER, b.split()));
    // DEREGISTER has an empty body: a bare header.
    frames.push((
        op::DEREGISTER,
        BytesMut::from(&[6u8, 0, 0, 0, op::DEREGISTER, 0][..]),
    ));

    for (opc, frame) in frames {
        client.send(&frame).await;
        let (c, fatal, msg) = client.expect_err().await;
        assert_eq!(c, code(ErrorCode::UnknownOp), "op {opc:#04x}: {msg}");
        assert!(!fatal, "op {opc:#04x}: the connection stays open");
        assert!(
            msg.contains("without a control plane") && msg.contains(&format!("{opc:#04x}")),
            "op {opc:#04x}: {msg}"
        );
    }

    // The same connection still publishes, and the subscriber gets it.
    client.publish("jobs.run", b"payload").await;
    client.ping_pong().await;
    let f = sub.next().await.expect("the message");
    match f.parse() {
        Frame::Msg(m) => {
            assert_eq!(m.subject, b"jobs.run");
            assert_eq!(m.payload, b"payload");
        }
        other => panic!("expected MSG, got {other:?}"),
    }
    assert_eq!(h.stats().msgs_in, 1);
    h.shutdown();
    h.join();
}
