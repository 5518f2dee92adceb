//! `soe-dump FILE`: see `soe-dump --help` and the library docs.

use std::process::ExitCode;

fn main() -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match soe_dump::run(std::env::args_os(), &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // clap's messages already say "error:" and end with a newline.
            if message.starts_with("error:") {
                eprint!("{message}");
            } else {
                eprintln!("soe-dump: error: {message}");
            }
            ExitCode::from(2)
        }
    }
}
