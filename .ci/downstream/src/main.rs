//! A user's program: the parent opens a ring, runs itself as a child that sends `QUOTES` quotes
//! with `send_pod`, and checks every one, field by field, in order, then the clean end of the
//! stream. Exits non-zero on any difference.

use bytemuck::{Pod, Zeroable};
use shmpipe::transport::shm::ShmConfig;
use shmpipe::{PodReceiver, PodSender, RecvError};
use std::process::{Command, ExitCode};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
struct Quote {
    price: u64,
    qty: u32,
    venue: u16,
    _pad: [u8; 2],
}

const QUOTES: u32 = 10_000;

fn quote(i: u32) -> Quote {
    Quote {
        price: 1_000_000 + u64::from(i) * 3,
        qty: i,
        venue: (i % 7) as u16,
        _pad: [0; 2],
    }
}

fn config(name: &str) -> Result<ShmConfig, shmpipe::Error> {
    Ok(ShmConfig::named(name)?
        .capacity(256)
        .max_message(std::mem::size_of::<Quote>()))
}

fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, role, name] = &args[..] {
        if role == "child" {
            let mut tx = config(name)?.open_sender()?;
            for i in 0..QUOTES {
                tx.send_pod_timeout(&quote(i), Duration::from_secs(30))?;
            }
            return Ok(ExitCode::SUCCESS);
        }
    }
    let name = format!("downstream-check-{}", std::process::id());
    let mut rx = config(&name)?.open_receiver()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["child", &name])
        .spawn()?;
    let mut got = 0;
    loop {
        match rx.recv_pod::<Quote>() {
            Ok(q) if q == quote(got) => got += 1,
            Ok(q) => {
                eprintln!("quote {got}: got {q:?}, want {:?}", quote(got));
                return Ok(ExitCode::FAILURE);
            }
            Err(e) if matches!(e, shmpipe::TypedRecvError::Channel(RecvError::Disconnected)) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let status = child.wait()?;
    println!("received {got} quotes from process {} ({status})", child.id());
    Ok(if got == QUOTES && status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
