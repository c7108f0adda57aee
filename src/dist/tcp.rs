//! One process per rank over TCP, in a star around rank 0: the rendezvous, then the host
//! collectives (and, through the host, device collectives where there is no NCCL).
//!
//! **Rendezvous.** Rank 0 listens on the rendezvous port (`super::env`); every other rank
//! connects (retrying until the deadline: rank 0 may start last) and sends a hello — its
//! rank, the world size, a fingerprint of its binary, its config and the checkpoint it
//! resumes. Rank 0 compares each with its own and either refuses every rank with one message
//! naming the rank and the difference, or welcomes them. The connections then carry the
//! collectives (among them, on GPUs, NCCL's unique id from rank 0).
//!
//! **Collectives.** Each is one round: every rank sends its bytes to rank 0, which, having
//! all of them in rank order, sends every rank the whole set. A frame carries the collective's
//! name and sequence number, so ranks that disagree on the order of collectives are named.
//!
//! **Failures.** A rank that exits or crashes closes its socket: rank 0 notices at once, sends
//! every other rank an abort naming it, and fails; a rank that hangs is named when rank 0's
//! deadline passes. Other ranks wait on rank 0 a little longer than the deadline, so rank 0's
//! message arrives first. A rank that fails with an error tells rank 0 why (`abort`).
use super::HostComm;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const DATA: u8 = 0;
const ABORT: u8 = 1;
const HELLO: u8 = 2;
const WELCOME: u8 = 3;
const REFUSED: u8 = 4;

/// How much longer than the deadline a rank waits on rank 0, whose own deadline names the
/// culprit first.
const LEAF_GRACE: Duration = Duration::from_secs(20);

/// Frames larger than this are refused (a corrupt length must not allocate terabytes).
const MAX_FRAME: usize = 1 << 36;

/// What each rank tells rank 0 at the rendezvous.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub rank: usize,
    pub world: usize,
    pub host: String,
    /// tz-engine's version and a fingerprint of the executable.
    pub binary: String,
    /// The run's config (TOML, after `--set`).
    pub config: String,
    /// The checkpoint it resumes ("none" for a fresh run).
    pub checkpoint: String,
}

struct Frame {
    kind: u8,
    seq: u64,
    op: String,
    body: Vec<u8>,
}

enum ReadError {
    Timeout,
    Closed,
    Bad(String),
}

fn write_frame(s: &mut TcpStream, kind: u8, seq: u64, op: &str, body: &[u8]) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(18 + op.len());
    head.extend_from_slice(&((1 + 8 + 1 + op.len() + body.len()) as u64).to_le_bytes());
    head.push(kind);
    head.extend_from_slice(&seq.to_le_bytes());
    head.push(op.len() as u8);
    head.extend_from_slice(op.as_bytes());
    s.write_all(&head)?;
    s.write_all(body)?;
    s.flush()
}

fn read_exact_by(s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<(), ReadError> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Timeout);
        }
        s.set_read_timeout(Some(left)).map_err(|e| ReadError::Bad(e.to_string()))?;
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe) => {
                return Err(ReadError::Closed)
            }
            Err(e) => return Err(ReadError::Bad(e.to_string())),
        }
    }
    Ok(())
}

fn read_frame(s: &mut TcpStream, deadline: Instant) -> Result<Frame, ReadError> {
    let mut len = [0u8; 8];
    read_exact_by(s, &mut len, deadline)?;
    let len = u64::from_le_bytes(len) as usize;
    if !(10..=MAX_FRAME).contains(&len) {
        return Err(ReadError::Bad(format!("a frame of {len} bytes")));
    }
    let mut buf = vec![0u8; len];
    read_exact_by(s, &mut buf, deadline)?;
    let (kind, seq, op_len) = (buf[0], u64::from_le_bytes(buf[1..9].try_into().expect("8 bytes")), buf[9] as usize);
    if 10 + op_len > len {
        return Err(ReadError::Bad("a truncated frame".into()));
    }
    let op = String::from_utf8_lossy(&buf[10..10 + op_len]).to_string();
    Ok(Frame { kind, seq, op, body: buf[10 + op_len..].to_vec() })
}

fn encode_all(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
    for p in parts {
        out.extend_from_slice(&(p.len() as u64).to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

fn decode_all(mut b: &[u8], world: usize) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::with_capacity(world);
    for _ in 0..world {
        let n = u64::from_le_bytes(b.get(..8)?.try_into().ok()?) as usize;
        out.push(b.get(8..8 + n)?.to_vec());
        b = &b[8 + n..];
    }
    b.is_empty().then_some(out)
}

/// One rank's end of the star.
pub struct TcpComm {
    rank: usize,
    world: usize,
    timeout: Duration,
    /// Rank 0: a stream per other rank (index r; 0 unused). Others: the stream to rank 0.
    links: Mutex<Vec<Option<TcpStream>>>,
    calls: AtomicU64,
    sharing: usize,
}

impl TcpComm {
    /// Says that `n` ranks (this one included) share this process's device memory.
    pub fn sharing_memory(mut self, n: usize) -> Self {
        self.sharing = n.max(1);
        self
    }

    /// Joins the rendezvous of rank 0 at `addr:port` as `hello.rank` of `hello.world`, waiting
    /// up to `timeout` for every rank.
    pub fn rendezvous(addr: &str, port: u16, hello: &Hello, timeout: Duration) -> Result<TcpComm> {
        let (rank, world) = (hello.rank, hello.world);
        let deadline = Instant::now() + timeout;
        let mut links: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
        if rank == 0 {
            let listener = TcpListener::bind(("0.0.0.0", port))
                .with_context(|| format!("rank 0: cannot listen on port {port} for the rendezvous (set TZ_RDZV_PORT to a free port)"))?;
            listener.set_nonblocking(true)?;
            let mut hellos: Vec<Option<Hello>> = vec![None; world];
            while hellos.iter().skip(1).any(Option::is_none) {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = (1..world).filter(|&r| hellos[r].is_none()).map(|r| r.to_string()).collect();
                    bail!(
                        "rank 0: the rendezvous timed out after {} s: rank {} never connected to port {port}",
                        timeout.as_secs(),
                        missing.join(", ")
                    );
                }
                let mut s = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    Err(e) => return Err(e).context("rank 0: rendezvous accept"),
                };
                s.set_nonblocking(false)?;
                s.set_nodelay(true)?;
                // A stranger (a port scanner, another run) that sends no valid hello is dropped.
                let Ok(f) = read_frame(&mut s, (Instant::now() + Duration::from_secs(10)).min(deadline)) else { continue };
                let Ok(h) = serde_json::from_slice::<Hello>(&f.body) else { continue };
                if f.kind != HELLO {
                    continue;
                }
                if h.rank == 0 || h.rank >= world || h.world != world || hellos[h.rank].is_some() {
                    let why = if h.world != world {
                        format!("rank {} was started for a world of {} ranks, rank 0 for {world}", h.rank, h.world)
                    } else {
                        format!("two processes claim rank {} (or it is outside 1..{world})", h.rank)
                    };
                    let _ = write_frame(&mut s, REFUSED, 0, "rendezvous", why.as_bytes());
                    refuse_all(&mut links, &why);
                    bail!("rank 0: refused the rendezvous: {why}");
                }
                let r = h.rank;
                hellos[r] = Some(h);
                links[r] = Some(s);
            }
            // Every rank must run the same thing.
            for h in hellos.iter().flatten() {
                if let Some(why) = difference(hello, h) {
                    refuse_all(&mut links, &why);
                    bail!("rank 0: refused the rendezvous: {why}");
                }
            }
            for s in links.iter_mut().flatten() {
                write_frame(s, WELCOME, 0, "rendezvous", &[]).context("rank 0: sending the welcome")?;
            }
        } else {
            let mut s = loop {
                match TcpStream::connect((addr, port)) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() >= deadline => {
                        bail!("rank {rank}: cannot reach rank 0's rendezvous at {addr}:{port} within {} s: {e}", timeout.as_secs())
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            };
            s.set_nodelay(true)?;
            write_frame(&mut s, HELLO, 0, "rendezvous", &serde_json::to_vec(hello)?)
                .with_context(|| format!("rank {rank}: sending the hello"))?;
            let f = match read_frame(&mut s, deadline + LEAF_GRACE) {
                Ok(f) => f,
                Err(ReadError::Timeout) => bail!("rank {rank}: rank 0 did not complete the rendezvous within {} s", timeout.as_secs()),
                Err(ReadError::Closed) => bail!("rank {rank}: rank 0 closed the rendezvous (it failed; see its error)"),
                Err(ReadError::Bad(e)) => bail!("rank {rank}: rendezvous: {e}"),
            };
            match f.kind {
                WELCOME => {}
                REFUSED => bail!("rank {rank}: refused at the rendezvous: {}", String::from_utf8_lossy(&f.body)),
                k => bail!("rank {rank}: rendezvous: unexpected message kind {k}"),
            }
            links[0] = Some(s);
        }
        Ok(TcpComm { rank, world, timeout, links: Mutex::new(links), calls: AtomicU64::new(0), sharing: 1 })
    }

    /// Tells the other ranks this one failed, and why (best effort: it is failing anyway).
    pub fn abort(&self, why: &str) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let seq = self.calls.load(Ordering::SeqCst);
        for s in links.iter_mut().flatten() {
            let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
            let _ = write_frame(s, ABORT, seq, "abort", why.as_bytes());
        }
    }
}

fn refuse_all(links: &mut [Option<TcpStream>], why: &str) {
    for s in links.iter_mut().flatten() {
        let _ = write_frame(s, REFUSED, 0, "rendezvous", why.as_bytes());
    }
}

/// Why rank `h` may not join rank 0's run (`mine`), if it may not.
fn difference(mine: &Hello, h: &Hello) -> Option<String> {
    let r = h.rank;
    if h.binary != mine.binary {
        return Some(format!("rank {r} (on {}) runs another tz-engine binary ({}) than rank 0 ({})", h.host, h.binary, mine.binary));
    }
    if h.config != mine.config {
        return Some(format!("rank {r} (on {}) has another config than rank 0: {}", h.host, config_difference(&mine.config, &h.config)));
    }
    if h.checkpoint != mine.checkpoint {
        return Some(format!("rank {r} (on {}) resumes {} but rank 0 resumes {}", h.host, h.checkpoint, mine.checkpoint));
    }
    None
}

/// The keys at which two TOML configs differ, with both values ("train.lr: 1e-6 on rank 0,
/// 1e-5 here").
pub fn config_difference(a: &str, b: &str) -> String {
    fn flatten(prefix: &str, v: &toml::Value, out: &mut std::collections::BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    flatten(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let parse = |s: &str| -> std::collections::BTreeMap<String, String> {
        let mut out = Default::default();
        if let Ok(v) = s.parse::<toml::Value>() {
            flatten("", &v, &mut out);
        }
        out
    };
    let (ma, mb) = (parse(a), parse(b));
    let keys: std::collections::BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
    let none = "(unset)".to_string();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| ma.get(*k) != mb.get(*k))
        .map(|k| format!("{k} = {} there, {} on rank 0", mb.get(k).unwrap_or(&none), ma.get(k).unwrap_or(&none)))
        .collect();
    match diffs.len() {
        0 => "the config texts differ".into(),
        n if n > 3 => format!("{} and {} more", diffs[..3].join("; "), n - 3),
        _ => diffs.join("; "),
    }
}

impl HostComm for TcpComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn ranks_sharing_memory(&self) -> usize {
        self.sharing
    }
    fn exchange(&self, op: &'static str, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let seq = self.calls.fetch_add(1, Ordering::SeqCst);
        let (rank, t) = (self.rank, self.timeout.as_secs());
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if rank == 0 {
            let deadline = Instant::now() + self.timeout;
            let mut all = vec![mine.to_vec()];
            for r in 1..self.world {
                let s = links[r].as_mut().expect("a link per rank");
                let why = match read_frame(s, deadline) {
                    Ok(f) if f.kind == DATA && f.seq == seq && f.op == op => {
                        all.push(f.body);
                        continue;
                    }
                    Ok(f) if f.kind == ABORT => format!("rank {r} failed: {}", String::from_utf8_lossy(&f.body)),
                    Ok(f) => format!("collective #{seq} is {op} on rank 0 but {} #{} on rank {r}", f.op, f.seq),
                    Err(ReadError::Timeout) => format!("{op} #{seq} timed out after {t} s waiting for rank {r}"),
                    Err(ReadError::Closed) => format!("rank {r} exited during {op} #{seq} (its connection closed)"),
                    Err(ReadError::Bad(e)) => format!("{op} #{seq}: reading from rank {r}: {e}"),
                };
                for s in links.iter_mut().flatten() {
                    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                    let _ = write_frame(s, ABORT, seq, op, why.as_bytes());
                }
                bail!("rank 0: {why}");
            }
            let body = encode_all(&all);
            for r in 1..self.world {
                let s = links[r].as_mut().expect("a link per rank");
                s.set_write_timeout(Some(self.timeout))?;
                let Err(e) = write_frame(s, DATA, seq, op, &body) else { continue };
                // A rank that sent its part and then died: the same report as one that died
                // before sending, and the others are told.
                let why = if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe) {
                    format!("rank {r} exited during {op} #{seq} (its connection closed)")
                } else {
                    format!("{op} #{seq}: sending to rank {r}: {e}")
                };
                for s in links.iter_mut().flatten() {
                    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                    let _ = write_frame(s, ABORT, seq, op, why.as_bytes());
                }
                bail!("rank 0: {why}");
            }
            Ok(all)
        } else {
            let s = links[0].as_mut().expect("a link to rank 0");
            s.set_write_timeout(Some(self.timeout))?;
            if let Err(e) = write_frame(s, DATA, seq, op, mine) {
                bail!("rank {rank}: {op} #{seq}: rank 0 is gone ({e})");
            }
            match read_frame(s, Instant::now() + self.timeout + LEAF_GRACE) {
                Ok(f) if f.kind == DATA && f.seq == seq && f.op == op => {
                    decode_all(&f.body, self.world).ok_or_else(|| anyhow!("rank {rank}: {op} #{seq}: a malformed reply from rank 0"))
                }
                Ok(f) if f.kind == ABORT => bail!("rank {rank}: {op} #{seq} stopped: {}", String::from_utf8_lossy(&f.body)),
                Ok(f) => bail!("rank {rank}: collective #{seq} is {op} here but {} #{} on rank 0", f.op, f.seq),
                Err(ReadError::Timeout) => bail!("rank {rank}: {op} #{seq} timed out after {t} s waiting for rank 0"),
                Err(ReadError::Closed) => bail!("rank {rank}: {op} #{seq}: rank 0 exited (its connection closed)"),
                Err(ReadError::Bad(e)) => bail!("rank {rank}: {op} #{seq}: {e}"),
            }
        }
    }
}

super::staged::staged_comm!(TcpComm);

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(rank: usize, world: usize, config: &str) -> Hello {
        Hello { rank, world, host: "localhost".into(), binary: "b".into(), config: config.into(), checkpoint: "none".into() }
    }

    /// A free port (bind to 0, read it back, release it).
    fn free_port() -> u16 {
        TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port()
    }

    fn ranks<T: Send>(world: usize, f: impl Fn(usize, u16) -> T + Sync) -> Vec<T> {
        let port = free_port();
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..world)
                .map(|r| {
                    s.spawn({
                        let f = &f;
                        move || f(r, port)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn collectives_over_the_star() {
        let out = ranks(3, |r, port| {
            let c = TcpComm::rendezvous("127.0.0.1", port, &hello(r, 3, "a = 1"), Duration::from_secs(20)).unwrap();
            let mut x = [r as f64, 0.5];
            c.all_reduce_f64(&mut x).unwrap();
            let g = c.all_gather_bytes(&vec![r as u8; r]).unwrap();
            c.barrier().unwrap();
            (x, g)
        });
        for (x, g) in out {
            assert_eq!(x, [3.0, 1.5]);
            assert_eq!(g, vec![vec![], vec![1], vec![2, 2]]);
        }
    }

    #[test]
    fn a_different_config_is_refused_naming_rank_and_key() {
        let out = ranks(2, |r, port| {
            let cfg = if r == 1 { "[train]\nlr = 1e-5" } else { "[train]\nlr = 1e-6" };
            TcpComm::rendezvous("127.0.0.1", port, &hello(r, 2, cfg), Duration::from_secs(20)).map(|_| ()).unwrap_err().to_string()
        });
        assert!(out[0].contains("rank 1") && out[0].contains("train.lr = 0.00001 there, 0.000001 on rank 0"), "{}", out[0]);
        assert!(out[1].starts_with("rank 1: refused at the rendezvous: rank 1"), "{}", out[1]);
    }

    #[test]
    fn a_rank_that_exits_is_named_and_the_others_stop() {
        let started = Instant::now();
        let out = ranks(3, |r, port| {
            let c = TcpComm::rendezvous("127.0.0.1", port, &hello(r, 3, ""), Duration::from_secs(30)).unwrap();
            c.barrier().unwrap();
            if r == 2 {
                // Gone without a word: its sockets close.
                drop(c);
                return String::new();
            }
            c.barrier().unwrap_err().to_string()
        });
        assert!(started.elapsed() < Duration::from_secs(10), "the ranks waited out the deadline");
        assert_eq!(out[0], "rank 0: rank 2 exited during barrier #1 (its connection closed)");
        assert_eq!(out[1], "rank 1: barrier #1 stopped: rank 2 exited during barrier #1 (its connection closed)");
    }

    #[test]
    fn a_hung_rank_is_named_at_the_deadline_and_an_error_is_forwarded() {
        let out = ranks(2, |r, port| {
            let c = TcpComm::rendezvous("127.0.0.1", port, &hello(r, 2, ""), Duration::from_secs(1)).unwrap();
            if r == 1 {
                std::thread::sleep(Duration::from_millis(2500));
                return String::new();
            }
            c.all_gather_bytes(&[1]).unwrap_err().to_string()
        });
        assert_eq!(out[0], "rank 0: all_gather #0 timed out after 1 s waiting for rank 1");
        let out = ranks(2, |r, port| {
            let c = TcpComm::rendezvous("127.0.0.1", port, &hello(r, 2, ""), Duration::from_secs(20)).unwrap();
            if r == 1 {
                c.abort("the data file is truncated");
                return String::new();
            }
            c.barrier().unwrap_err().to_string()
        });
        assert_eq!(out[0], "rank 0: rank 1 failed: the data file is truncated");
    }

    #[test]
    fn config_differences_list_keys() {
        assert_eq!(config_difference("a = 1\n[b]\nc = 2", "a = 1\n[b]\nc = 3"), "b.c = 3 there, 2 on rank 0");
        assert_eq!(config_difference("a = 1", "a = 1\nz = true"), "z = true there, (unset) on rank 0");
    }
}
