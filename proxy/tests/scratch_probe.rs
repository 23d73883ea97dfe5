#[test]
fn probe() {
    let cases = [
        "# c\nlisten_port = 971\n\n[[target]]\nname = \"a\"\nports = [443]\n",
        "# c\nlisten_port = 971\n\n[[target]]\nname = \"a\"\nhosts = [\"10.0.0.1\"]\nports = [443]\n\n[[target]]\nname = \"b\"\nports = [443]\n",
        "# c\nlisten_port = 971\n\n[[target]]\nname = \"a\"\nhosts = [\"10.0.0.1\"]\nports = [443]\n\n[[target]]\nname = \"b\"\nhosts = [\"10.0.0.2\"]\nports = [443]\nextra = 1\n",
        "# c\n\n[target]\nname = \"a\"\n",
        "# c\n\nmax_connections = -1\n",
        "# c\n\nmax_connections = 2305843009213693952\n",
        "# c\n\nmax_connections = 2305843009213693951\n",
        "# c\n\nresolve_interval = 5\n",
        "# c\r\n\r\nbogus = 5\r\n",
        "# é\n  bogus = 5\n",
        "# c\n\nupstream_mark = 0\n",
        "# c\n\nconnect_timeout = \"100000000000000000y\"\n",
        "# c\n\n[[target]]\nname = \"a\"\nhosts = [\"10.0.0.1\", 7]\nports = [1]\n",
        "# c\n\n[[target]]\nname = 5\nhosts = [\"10.0.0.1\"]\nports = [1]\n",
        "# c\n\n[[target]]\nname = \"a\"\nhosts = [\"10.0.0.1\"]\nports = [1]\n[[target]]\nname = \"b\"\nhosts = [\"10.0.0.1\"]\nports = [1]\n",
        "# c\n\n[[target]]\nname = \"a\"\nhosts = [\"1.2.3.4/33\"]\nports = [1]\n",
        "# c\n\n[[target]]\nname = \"a\"\nhosts = [\"2001:db8::1/64\"]\nports = [1]\n",
];
    for c in cases {
        match jitproxy::config::Config::parse(c, "test.toml") {
            Ok(_) => println!("OK   <- {c:?}"),
            Err(e) => println!("ERR  {e}  <- {c:?}"),
        }
    }
}
