//! `pinion-certs`: write a mesh CA and SPIFFE workload certificates as PEM files.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pinion_certs::Ca;

#[derive(Parser)]
#[command(name = "pinion-certs", about = "Mesh PKI tooling: a CA and SPIFFE workload certificates")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write DIR/ca.pem and DIR/<ns>-<sa>/{cert.pem,key.pem} for each workload.
    Mesh {
        /// Output directory (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// SPIFFE trust domain.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// A workload `ns/sa[,dns...]`: SPIFFE ID spiffe://<trust-domain>/ns/<ns>/sa/<sa> plus DNS SANs. Repeatable.
        #[arg(long = "workload", value_name = "NS/SA[,DNS...]", required = true, value_parser = parse_workload)]
        workloads: Vec<WorkloadSpec>,
        /// Common name of the CA certificate.
        #[arg(long, default_value = "pinion mesh CA")]
        ca_name: String,
    },
}

#[derive(Clone)]
struct WorkloadSpec {
    namespace: String,
    service_account: String,
    dns: Vec<String>,
}

fn parse_workload(spec: &str) -> Result<WorkloadSpec, String> {
    let mut parts = spec.split(',');
    let id = parts.next().unwrap_or_default();
    let (namespace, service_account) = id.split_once('/').ok_or_else(|| format!("{id:?} is not ns/sa"))?;
    Ok(WorkloadSpec {
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
        dns: parts.map(str::to_string).collect(),
    })
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pinion-certs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let Command::Mesh { out, trust_domain, workloads, ca_name } = cli.command;
    // Issue everything before writing anything: issuing validates ns and sa (SPIFFE charset,
    // so no path can escape `out`), and a bad workload leaves no partial output.
    let ca = Ca::new(&ca_name)?;
    let mut issued = Vec::new();
    let mut dirs = HashSet::new();
    for w in &workloads {
        let dns: Vec<&str> = w.dns.iter().map(String::as_str).collect();
        let workload = ca.issue_spiffe(&trust_domain, &w.namespace, &w.service_account, &dns)?;
        let dir = format!("{}-{}", w.namespace, w.service_account);
        if !dirs.insert(dir.clone()) {
            return Err(format!("two workloads would be written to {dir:?}").into());
        }
        issued.push((out.join(dir), workload));
    }
    println!("{}", ca.write_to(&out)?.display());
    for (dir, workload) in &issued {
        let (cert, key) = workload.write_to(dir)?;
        println!("{}\n{}", cert.display(), key.display());
    }
    Ok(())
}
