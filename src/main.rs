//! Entry point: serve the plugin protocol when Terraform runs us, or run a subcommand.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        return match homelab::cli::run(&args, &mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{}", e.message);
                ExitCode::from(e.code)
            }
        };
    }
    if std::env::var_os("TF_PLUGIN_MAGIC_COOKIE").is_none() {
        eprintln!("{}", homelab::cli::USAGE);
        return ExitCode::from(1);
    }
    // Diagnostics are for people: no Rust backtraces in them (tf-provider appends one when
    // RUST_BACKTRACE is set), and Terraform's panic detector mistakes a backtrace's
    // `panic::…` lines on the plugin's output for a crash of Terraform itself. Panics still
    // print theirs. Set before any thread starts.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    homelab::logging::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(homelab::serve()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "provider stopped");
            eprintln!("terraform-provider-homelab: {e:#}");
            ExitCode::from(1)
        }
    }
}
