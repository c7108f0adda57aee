fn main() {
    std::process::exit(tz_engine::cli::main());
}
