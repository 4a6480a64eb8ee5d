//! `torn-quota batch`: every request of `--input` over the keys of `--keys`, JSON Lines in
//! input order to `--output`, progress on stderr.

use std::io::Write as _;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use torn_quota::batch::{
    BatchConfig, BatchHandler, BatchOutcome, BatchRequest, RequestError, result_line,
};
use torn_quota::torn::check_path;
use torn_quota::{ApiKey, Limiter, RateLimitConfig};

use super::{CliResult, emit};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The keys to use: one a line (blank lines and `#` comments are skipped).
    #[arg(long)]
    keys: PathBuf,
    /// The requests: one Torn v2 path a line, e.g. `user/4/basic` (blank lines and `#`
    /// comments are skipped; `index` counts the requests from 0).
    #[arg(long)]
    input: PathBuf,
    /// Where the results go: one JSON object a line, in input order. Written to a
    /// temporary file beside it and renamed at the end, so a run that fails leaves the
    /// previous file as it was. Must not be --input or --keys.
    #[arg(long)]
    output: PathBuf,
    /// Requests in flight at once.
    #[arg(long, default_value_t = NonZeroUsize::new(32).expect("32 is not zero"))]
    concurrency: NonZeroUsize,
}

pub(crate) async fn run(settings: &super::Settings, args: Args) -> CliResult {
    // Before anything reads a file: a signal from now on ends the batch cleanly, with
    // every line written.
    let cancel = tokio_util::sync::CancellationToken::new();
    spawn_signal_handler(cancel.clone())?;
    let config = settings.rate_limit()?;
    let torn = settings.torn_client()?;
    let target = output_target(&args.output, &[&args.input, &args.keys])?;
    let keys = read_keys(&args.keys)?;
    let lines = read_requests(&args.input, &keys)?;
    // Fail before any request rather than after the batch; the previous output stays.
    let mut out = PendingOutput::create(&target)?;
    let (requests, refused) = split_lines(lines);

    let limiter = limiter(config).await?;
    let client = super::rollout::client(settings, limiter, torn)?;
    let bar = ProgressBar::new(requests.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} ({eta} left)")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let progress = bar.clone();
    let handler = BatchHandler::new(client, BatchConfig::default().concurrency(args.concurrency))
        .cancel_on(cancel)
        .on_progress(move |p| {
            progress.set_position(p.done as u64);
            if p.failed > 0 {
                progress.set_message(format!("{} failed", p.failed));
            }
        });
    let mut outcome = handler.run(requests, keys).await?;
    bar.finish_and_clear();
    merge_refused(&mut outcome, refused);
    write_results(out.file(), &outcome)
        .and_then(|()| out.commit())
        .map_err(|e| format!("cannot write {}: {e}", args.output.display()))?;
    summarize(&outcome);
    Ok(if outcome.stats.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The configured Redis; the batch refuses to run without it unless the configuration
/// allows deciding locally.
async fn limiter(
    config: RateLimitConfig,
) -> Result<Limiter, Box<dyn std::error::Error + Send + Sync>> {
    let limiter = Limiter::redis(config.clone())?;
    if let Err(e) = limiter.ping().await {
        if matches!(config.on_redis_down(), torn_quota::OnRedisDown::FailFast) {
            return Err(format!(
                "redis at {} does not answer ({e}); owners' quotas are shared through it \
                 (set TORN_QUOTA_ON_REDIS_DOWN=local to run on a local share)",
                config.redis_target_redacted()
            )
            .into());
        }
        eprintln!("warning: redis does not answer; deciding locally on a share of each quota");
    }
    Ok(limiter)
}

/// One key a line. A malformed line is named by its number, never echoed.
pub(crate) fn read_keys(path: &Path) -> Result<Vec<ApiKey>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read keys file {}: {e}", path.display()))?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = ApiKey::new(line)
            .map_err(|e| format!("keys file {} line {}: {e}", path.display(), n + 1))?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(format!("keys file {} holds no key", path.display()));
    }
    Ok(keys)
}

/// Ends the batch on Ctrl-C or SIGTERM (what `kill`, systemd and container runtimes send)
/// alike: unsent requests fail as cancelled and every line is written.
fn spawn_signal_handler(
    cancel: tokio_util::sync::CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot listen for SIGTERM: {e}"))?;
    tokio::spawn(async move {
        #[cfg(unix)]
        let terminated = term.recv();
        #[cfg(not(unix))]
        let terminated = std::future::pending::<Option<()>>();
        tokio::select! {
            r = tokio::signal::ctrl_c() => if r.is_err() { return },
            _ = terminated => {}
        }
        eprintln!("signal received: finishing the requests in flight, failing the rest");
        cancel.cancel();
    });
    Ok(())
}

/// The file the results replace: `--output` itself, or what it links to (the link stays).
/// Refused when it is one of `inputs`, however spelled (relative, through a link): the run
/// would destroy what it reads.
fn output_target(output: &Path, inputs: &[&Path]) -> Result<PathBuf, String> {
    let target = if let Ok(existing) = std::fs::canonicalize(output) {
        existing
    } else {
        let name = output
            .file_name()
            .ok_or_else(|| format!("--output {} names no file", output.display()))?;
        let dir = match output.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::canonicalize(dir)
            .map_err(|e| format!("cannot use --output {}: {e}", output.display()))?
            .join(name)
    };
    for input in inputs {
        if std::fs::canonicalize(input).is_ok_and(|i| i == target) {
            return Err(format!(
                "--output {} is the same file as {}: refusing to overwrite what the batch reads",
                output.display(),
                input.display()
            ));
        }
    }
    Ok(target)
}

/// The results on their way: a temporary file beside the target, renamed over it by
/// [`commit`](Self::commit); removed when dropped before that.
struct PendingOutput {
    file: std::fs::File,
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl PendingOutput {
    fn create(target: &Path) -> Result<Self, String> {
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let temp = target.with_file_name(format!(
            ".{name}.{}.{:08x}.tmp",
            std::process::id(),
            rand::random::<u32>()
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| format!("cannot create a file beside {}: {e}", target.display()))?;
        // The replacement keeps the previous file's permissions.
        if let Ok(meta) = std::fs::metadata(target) {
            let _ = file.set_permissions(meta.permissions());
        }
        Ok(Self {
            file,
            temp,
            target: target.to_owned(),
            committed: false,
        })
    }

    fn file(&mut self) -> &mut std::fs::File {
        &mut self.file
    }

    /// Makes the results durable, then puts them in the target's place in one step.
    fn commit(mut self) -> std::io::Result<()> {
        self.file.sync_all()?;
        std::fs::rename(&self.temp, &self.target)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PendingOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// One request line: the request, or why it is refused without being sent.
type Line = Result<BatchRequest, RequestError>;

/// One Torn v2 path a line, each checked as the client checks it before sending: a bad
/// line is refused alone (its result says why, never repeating it), and spends no quota.
fn read_requests(path: &Path, keys: &[ApiKey]) -> Result<Vec<Line>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read input {}: {e}", path.display()))?;
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let refuse = |why: String| RequestError {
            code: None,
            message: format!("input line {}: not sent: {why}", n + 1),
        };
        let checked = match check_path(line) {
            Ok(_) if keys.iter().any(|k| line.contains(k.expose())) => Err(refuse(
                "the path carries an api key; keys come from --keys".into(),
            )),
            Ok(p) => Ok(BatchRequest::new(p.strip_prefix("v2/").unwrap_or(p))),
            Err(e) => Err(refuse(e.to_string())),
        };
        lines.push(checked);
    }
    Ok(lines)
}

/// The requests to run, and the refused lines with their place among all lines.
fn split_lines(lines: Vec<Line>) -> (Vec<BatchRequest>, Vec<(usize, RequestError)>) {
    let mut requests = Vec::with_capacity(lines.len());
    let mut refused = Vec::new();
    for (i, line) in lines.into_iter().enumerate() {
        match line {
            Ok(r) => requests.push(r),
            Err(e) => refused.push((i, e)),
        }
    }
    (requests, refused)
}

/// Puts the refused lines back in their places among the batch's results, and counts them.
fn merge_refused(outcome: &mut BatchOutcome, refused: Vec<(usize, RequestError)>) {
    if refused.is_empty() {
        return;
    }
    let n = refused.len();
    let ran = std::mem::take(&mut outcome.results);
    let mut ran = ran.into_iter();
    let mut refused = refused.into_iter().peekable();
    let mut all = Vec::with_capacity(ran.len() + n);
    loop {
        if refused.peek().is_some_and(|(i, _)| *i == all.len()) {
            let (_, e) = refused.next().expect("peeked");
            all.push(Err(e));
        } else if let Some(r) = ran.next() {
            all.push(r);
        } else if let Some((_, e)) = refused.next() {
            all.push(Err(e));
        } else {
            break;
        }
    }
    outcome.results = all;
    outcome.stats.requests += n;
    outcome.stats.failed += n;
}

pub(crate) fn write_results(
    out: &mut impl std::io::Write,
    outcome: &BatchOutcome,
) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(out);
    for (index, result) in outcome.results.iter().enumerate() {
        serde_json::to_writer(&mut w, &result_line(index, result))?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

/// The summary: a table on stderr, one JSON line on stdout.
pub(crate) fn summarize(outcome: &BatchOutcome) {
    let s = &outcome.stats;
    eprintln!(
        "{} requests ({} distinct) in {:.1} s: {} ok, {} failed; {} sent, {} code-5 answers, \
         {} keys dropped; quota used {:.1} %",
        s.requests,
        s.fetches,
        s.duration.as_secs_f64(),
        s.succeeded,
        s.failed,
        s.sent,
        s.rate_limited,
        s.keys_dropped,
        s.quota_used * 100.0
    );
    eprintln!("  owner        keys  granted     sent  errored  code 5");
    for (owner, o) in &s.owners {
        eprintln!(
            "  {owner:<10} {:>6} {:>8} {:>8} {:>8} {:>7}",
            o.keys, o.granted, o.sent, o.errored, o.rate_limited
        );
    }
    emit(&serde_json::to_value(s).unwrap_or_default());
}
