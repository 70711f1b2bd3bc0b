//! The `wqat` command line. Errors print as one line (no backtrace) and exit non-zero.

use clap::{Parser, Subcommand};
use wqat::gpu::{list_adapters, GpuContext, GpuOptions};

#[derive(Parser)]
#[command(name = "wqat", version, about = "GPU-first quantization-aware training on wgpu")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// List every GPU adapter with its limits and optional features.
    Devices {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn devices(json: bool) -> wqat::Result<()> {
    let list = list_adapters();
    if list.is_empty() {
        return Err(wqat::WqatError::NoAdapter(String::new()));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
        return Ok(());
    }
    let chosen = GpuContext::new(&GpuOptions::from_env()).ok().map(|c| c.summary.name.clone());
    for a in &list {
        let mark = if Some(&a.name) == chosen.as_ref() { "*" } else { " " };
        println!("{mark} {} [{} {}] driver: {} {}", a.name, a.backend, a.device_type, a.driver, a.driver_info);
        println!(
            "    max buffer {} MiB, max storage binding {} MiB, max workgroup {:?} ({} invocations), {} workgroups/dim",
            a.max_buffer_size >> 20,
            a.max_storage_binding_size >> 20,
            a.max_workgroup_size,
            a.max_invocations_per_workgroup,
            a.max_workgroups_per_dimension
        );
        println!(
            "    SHADER_F16 {}  SUBGROUP {}  dot4I8Packed {}  timestamps {}",
            yes(a.shader_f16),
            yes(a.subgroup),
            yes(a.dot4_packed),
            yes(a.timestamp_query)
        );
    }
    println!("(* = the adapter wqat picks; choose another with --adapter NAME or WGPU_ADAPTER_NAME)");
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Devices { json }) => devices(json),
        None => devices(false),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
