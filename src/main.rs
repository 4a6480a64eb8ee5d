//! `torn-quota`: the operator CLI. JSON goes to stdout, one object per line; human text to
//! stderr.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
