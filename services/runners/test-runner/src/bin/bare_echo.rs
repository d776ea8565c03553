//! `bare-echo`: the Runner service with nothing but tonic underneath: `Run` returns the
//! payload as the result. The kit benchmark compares a kit runner against it, to show what
//! validation, scheduling and registration cost on top of plain gRPC.

use plugworker_rpc::runner::v1::runner_server::{Runner, RunnerServer};
use plugworker_rpc::runner::v1::{
    ListAlgorithmsRequest, ListAlgorithmsResponse, RunRequest, RunResponse,
};
use tonic::{Request, Response, Status};

struct BareEcho;

#[tonic::async_trait]
impl Runner for BareEcho {
    async fn run(&self, request: Request<RunRequest>) -> Result<Response<RunResponse>, Status> {
        Ok(Response::new(RunResponse {
            result: request.into_inner().payload,
            ..Default::default()
        }))
    }

    async fn list_algorithms(
        &self,
        _request: Request<ListAlgorithmsRequest>,
    ) -> Result<Response<ListAlgorithmsResponse>, Status> {
        Ok(Response::new(ListAlgorithmsResponse::default()))
    }
}

/// A Runner gRPC server with no kit: echoes payloads.
#[derive(clap::Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on; the bound address is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,

    /// Once bound, write `{"grpc": "ADDRESS"}` to this file (to PATH.tmp, renamed to PATH,
    /// as a runner's --address-file does).
    #[arg(long)]
    address_file: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = <Args as clap::Parser>::parse();
    if let Some(path) = &args.address_file {
        plugworker_lifecycle::address_file::clear(path)?;
    }
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let bound = listener.local_addr()?;
    println!("listening on {bound}");
    if let Some(path) = &args.address_file {
        plugworker_lifecycle::address_file::write(path, &[("grpc", bound)])?;
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    tonic::transport::Server::builder()
        .add_service(RunnerServer::new(BareEcho))
        .serve_with_incoming_shutdown(
            // What `Server::serve(addr)` does by default, and what the kit does: TCP_NODELAY
            // on every accepted connection (without it, small replies wait on Nagle).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}
