//! `migrator [run|status] [--dir DIR]`: applies (or lists) the broker's schema migrations
//! on `DATABASE_URL`. Exit 0 when the schema is current; non-zero with one line otherwise.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};

const USAGE: &str =
    "usage: migrator [run|status] [--dir DIR]   (env: DATABASE_URL, MIGRATOR_LOCK_WAIT_MS)";

struct Args {
    status: bool,
    dir: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        status: false,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "run" => args.status = false,
            "status" => args.status = true,
            "--dir" => args.dir = Some(it.next().context("--dir needs a directory")?.into()),
            "-h" | "--help" => bail!("{USAGE}"),
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    Ok(args)
}

async fn run() -> Result<()> {
    let args = parse_args()?;
    let url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .context("DATABASE_URL is not set")?;
    let wait_ms: u64 = match std::env::var("MIGRATOR_LOCK_WAIT_MS") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("invalid MIGRATOR_LOCK_WAIT_MS={v:?}"))?,
        Err(_) => 60_000,
    };
    let runner = match &args.dir {
        Some(dir) => migrator::from_dir(dir)?,
        None => migrator::embedded(),
    };
    let mut client = migrator::connect(&url).await?;
    if args.status {
        for (version, name, applied) in migrator::status(&mut client, &runner).await? {
            println!(
                "V{version:<4} {:<8} {name}",
                if applied { "applied" } else { "pending" }
            );
        }
        return Ok(());
    }
    let applied = migrator::migrate(&mut client, runner, Duration::from_millis(wait_ms)).await?;
    if applied.is_empty() {
        println!("schema is current; nothing to apply");
    }
    for (version, name) in applied {
        println!("applied V{version} {name}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("migrator: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("migrator: {e:#}");
            ExitCode::FAILURE
        }
    }
}
