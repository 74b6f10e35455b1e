//! The `socklat` daemon binary.

use clap::Parser;

fn main() {
    let cli = observer::cli::Cli::parse();
    if let Some(observer::cli::Command::Top(args)) = &cli.command {
        std::process::exit(observer::top::run(args));
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match observer::daemon::run(&cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("socklat: error: {}", observer::report::chain(&e));
            std::process::exit(1);
        }
    }
}
