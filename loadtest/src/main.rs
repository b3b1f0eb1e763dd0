//! Load-test harness for the gateway. Skeleton: the scenarios come with the
//! load-testing issue; this binary already parses its arguments and exits.

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") || args.is_empty() {
        println!("loadtest: load-test harness for chatgw (scenarios not implemented yet)");
        return Ok(());
    }
    anyhow::bail!("unknown scenario {:?}: scenarios are not implemented yet", args[0])
}
