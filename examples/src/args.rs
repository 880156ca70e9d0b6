//! Hand-rolled command-line parsing (no extra dependencies).

/// Which demo algorithm to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Knapsack,
    Chaos,
    Fanout,
    /// Attacks the server and other runs (isolation test only).
    Hostile,
    Hello,
}

impl Algorithm {
    /// Subcommand name; also the default algorithm name for the completion URL.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Knapsack => "knapsack",
            Algorithm::Chaos => "chaos",
            Algorithm::Fanout => "fanout",
            Algorithm::Hostile => "hostile",
            Algorithm::Hello => "hello",
        }
    }
}

/// Where the payload comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadSource {
    /// Signed URL handed over by Nexus (`--sas-uri=`).
    SasUri(String),
    /// Local file, for trying the algorithm without Nexus (`--payload-file=`).
    File(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    pub algorithm: Algorithm,
    pub source: PayloadSource,
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    Run(RunArgs),
}

fn is_help(arg: &str) -> bool {
    matches!(arg, "--help" | "-h" | "help")
}

/// Parses the arguments after the program name.
///
/// Options accept both `--name=value` and `--name value`.
pub fn parse(argv: &[String]) -> Result<Command, String> {
    let Some(first) = argv.first() else {
        return Err("missing algorithm (knapsack, chaos, fanout or hello)".to_owned());
    };
    if is_help(first) {
        return Ok(Command::Help);
    }
    let algorithm = match first.as_str() {
        "knapsack" => Algorithm::Knapsack,
        "chaos" => Algorithm::Chaos,
        "fanout" => Algorithm::Fanout,
        "hostile" => Algorithm::Hostile,
        "hello" => Algorithm::Hello,
        other => {
            return Err(format!(
                "unknown algorithm `{other}` (expected knapsack, chaos, fanout or hello)"
            ));
        }
    };

    let mut sas_uri = None;
    let mut payload_file = None;
    let mut request_id = None;
    let mut rest = argv[1..].iter();
    while let Some(arg) = rest.next() {
        if is_help(arg) {
            return Ok(Command::Help);
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (arg.as_str(), None),
        };
        let slot = match name {
            "--sas-uri" => &mut sas_uri,
            "--payload-file" => &mut payload_file,
            "--request-id" => &mut request_id,
            _ => return Err(format!("unexpected argument `{arg}`")),
        };
        let value = match inline {
            Some(v) => v,
            None => rest
                .next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))?,
        };
        if value.is_empty() || value == "%s" {
            return Err(format!(
                "{name} has no value (was the `%s` placeholder substituted?)"
            ));
        }
        if slot.replace(value).is_some() {
            return Err(format!("{name} given more than once"));
        }
    }

    let source = match (sas_uri, payload_file) {
        (Some(uri), None) => PayloadSource::SasUri(uri),
        (None, Some(path)) => PayloadSource::File(path),
        (Some(_), Some(_)) => {
            return Err("--sas-uri and --payload-file are mutually exclusive".to_owned());
        }
        (None, None) => return Err("missing --sas-uri=<URL> (or --payload-file=<PATH>)".to_owned()),
    };
    Ok(Command::Run(RunArgs {
        algorithm,
        source,
        request_id,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_nexus_style_arguments() {
        let cmd = parse(&argv(&[
            "knapsack",
            "--sas-uri=http://127.0.0.1:8090/data/v1/objects/payloads/knapsack/1?exp=1&sig=a=b",
            "--request-id=1234",
        ]))
        .unwrap();
        assert_eq!(
            cmd,
            Command::Run(RunArgs {
                algorithm: Algorithm::Knapsack,
                source: PayloadSource::SasUri(
                    "http://127.0.0.1:8090/data/v1/objects/payloads/knapsack/1?exp=1&sig=a=b"
                        .to_owned()
                ),
                request_id: Some("1234".to_owned()),
            })
        );
    }

    #[test]
    fn parses_space_separated_values_and_optional_request_id() {
        let cmd = parse(&argv(&["chaos", "--payload-file", "p.json"])).unwrap();
        assert_eq!(
            cmd,
            Command::Run(RunArgs {
                algorithm: Algorithm::Chaos,
                source: PayloadSource::File("p.json".to_owned()),
                request_id: None,
            })
        );
    }

    #[test]
    fn help_anywhere() {
        assert_eq!(parse(&argv(&["--help"])).unwrap(), Command::Help);
        assert_eq!(parse(&argv(&["-h"])).unwrap(), Command::Help);
        assert_eq!(
            parse(&argv(&["knapsack", "--help"])).unwrap(),
            Command::Help
        );
    }

    #[test]
    fn rejects_bad_command_lines() {
        assert!(parse(&argv(&[])).is_err());
        assert!(parse(&argv(&["sort", "--sas-uri=x"])).is_err());
        assert!(parse(&argv(&["knapsack"])).is_err());
        assert!(parse(&argv(&["knapsack", "--sas-uri=%s"])).is_err());
        assert!(parse(&argv(&["knapsack", "--sas-uri="])).is_err());
        assert!(parse(&argv(&["knapsack", "--sas-uri"])).is_err());
        assert!(parse(&argv(&["knapsack", "--sas-uri=a", "--sas-uri=b"])).is_err());
        assert!(parse(&argv(&["knapsack", "--sas-uri=a", "--payload-file=b"])).is_err());
        assert!(parse(&argv(&["knapsack", "--sas-uri=a", "--verbose"])).is_err());
    }
}
