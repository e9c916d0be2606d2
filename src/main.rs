//! The `fleet` binary: everything it does is the library's command line ([`fleet::cli`]).

fn main() -> std::process::ExitCode {
    fleet::cli::main()
}
