//! `loadtest`: see `loadtest --help` and docs/benchmarks.md.

use std::process::ExitCode;

use clap::Parser;
use loadtest::cli::Cli;
use loadtest::report::exit_code;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(loadtest::run(&cli)) {
        Ok(report) => {
            eprint!("{}", report.human());
            if cli.common.json {
                println!("{}", report.to_json());
            }
            ExitCode::from(exit_code(&report))
        }
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}
