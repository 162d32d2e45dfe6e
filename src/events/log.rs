//! The writer thread of the JSON-lines log (with size rotation and reopening) and the
//! accounting CSV. It never waits for the webhook.

use super::{csv, Event, EventsError, LogMsg};
use crate::config::EventsCfg;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

const BUF: usize = 1 << 16;

fn open_append(path: &Path) -> Result<(File, u64), EventsError> {
    let err = |source| EventsError::Open {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((file, len))
}

/// Path of the n-th rotated file: `events.jsonl.n`.
fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// An append-only file with a byte count.
struct Out {
    path: PathBuf,
    out: BufWriter<File>,
    size: u64,
}

impl Out {
    fn open(path: &Path) -> Result<Out, EventsError> {
        let (file, size) = open_append(path)?;
        Ok(Out {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(BUF, file),
            size,
        })
    }

    fn write(&mut self, bytes: &[u8]) {
        match self.out.write_all(bytes) {
            Ok(()) => self.size += bytes.len() as u64,
            Err(err) => {
                tracing::error!(path = %self.path.display(), error = %err, "cannot write event output")
            }
        }
    }

    fn flush(&mut self) {
        if let Err(err) = self.out.flush() {
            tracing::error!(path = %self.path.display(), error = %err, "cannot write event output");
        }
    }

    /// Flush, shift `.n` → `.n+1` (dropping what passes `keep`), rename the file to `.1`
    /// and open a new one (true when it did). A failed rotation is retried after another
    /// `size` bytes.
    fn rotate(&mut self, size: u64, keep: u32) -> bool {
        self.flush();
        let path = self.path.clone();
        let result = if keep == 0 {
            std::fs::remove_file(&path)
        } else {
            let mut r = Ok(());
            for n in (1..keep).rev() {
                let from = rotated(&path, n);
                if from.exists() {
                    if let Err(e) = std::fs::rename(&from, rotated(&path, n + 1)) {
                        r = Err(e);
                    }
                }
            }
            r.and(std::fs::rename(&path, rotated(&path, 1)))
        };
        let rotated = result.is_ok();
        if let Err(err) = result {
            tracing::error!(path = %path.display(), error = %err, "cannot rotate the file");
        }
        if let Err(err) = self.reopen() {
            tracing::error!(error = %err, "cannot reopen the file after rotation");
        }
        if self.size >= size {
            self.size = 0;
        }
        rotated
    }

    /// Flush, then reopen by name (the current file may have been renamed).
    fn reopen(&mut self) -> Result<(), EventsError> {
        self.flush();
        let (file, size) = open_append(&self.path)?;
        self.out = BufWriter::with_capacity(BUF, file);
        self.size = size;
        Ok(())
    }
}

pub(super) struct LogWriter {
    log: Out,
    rotate_size: u64,
    rotate_keep: u32,
    csv: Option<Out>,
}

impl LogWriter {
    pub(super) fn open(cfg: &EventsCfg) -> Result<LogWriter, EventsError> {
        let log = Out::open(&cfg.path)?;
        let csv = match &cfg.csv_path {
            Some(p) => {
                let mut o = Out::open(p)?;
                header(&mut o);
                Some(o)
            }
            None => None,
        };
        Ok(LogWriter {
            log,
            rotate_size: cfg.rotate_size,
            rotate_keep: cfg.rotate_keep,
            csv,
        })
    }

    /// Blocking loop of the writer thread.
    pub(super) fn run(mut self, mut rx: mpsc::UnboundedReceiver<LogMsg>) {
        while let Some(msg) = rx.blocking_recv() {
            let mut next = Some(msg);
            while let Some(msg) = next.take() {
                match msg {
                    LogMsg::Event(e) => self.write_one(&e),
                    LogMsg::Accepted(batch) => {
                        for e in batch.events() {
                            self.write_one(&e);
                        }
                    }
                    LogMsg::Reopen => self.reopen(),
                    LogMsg::Close(ack) => {
                        self.flush();
                        let _ = ack.send(());
                        return;
                    }
                }
                next = rx.try_recv().ok();
            }
            self.flush();
        }
        self.flush();
    }

    fn flush(&mut self) {
        self.log.flush();
        if let Some(c) = &mut self.csv {
            c.flush();
        }
    }

    fn write_one(&mut self, e: &Event) {
        match serde_json::to_vec(e) {
            Ok(mut line) => {
                line.push(b'\n');
                self.log.write(&line);
                if self.rotate_size > 0 && self.log.size >= self.rotate_size {
                    self.rotate();
                }
            }
            Err(err) => tracing::error!(error = %err, "cannot encode event"),
        }
        if let Some(c) = &mut self.csv {
            if let Some(rec) = csv::csv_record(e) {
                c.write(rec.as_bytes());
                // the accounting file rotates by the same size and count, header first
                if self.rotate_size > 0
                    && c.size >= self.rotate_size
                    && c.rotate(self.rotate_size, self.rotate_keep)
                {
                    header(c);
                }
            }
        }
    }

    /// Between two lines: rotate the log.
    fn rotate(&mut self) {
        self.log.rotate(self.rotate_size, self.rotate_keep);
    }

    fn reopen(&mut self) {
        if let Err(err) = self.log.reopen() {
            tracing::error!(error = %err, "cannot reopen the event log");
        }
        if let Some(c) = &mut self.csv {
            match c.reopen() {
                Ok(()) => header(c),
                Err(err) => tracing::error!(error = %err, "cannot reopen the accounting CSV"),
            }
        }
    }
}

/// The header line, when the file is empty.
fn header(o: &mut Out) {
    if o.size == 0 {
        o.write(csv::CSV_HEADER.as_bytes());
        o.write(b"\n");
    }
}
