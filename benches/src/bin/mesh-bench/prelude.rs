//! What every module of the bench uses.

pub(crate) use bytes::{Bytes, BytesMut};
pub(crate) use clap::{Parser, ValueEnum};
pub(crate) use futures_util::future::join_all;
pub(crate) use futures_util::stream::{FuturesUnordered, StreamExt};
pub(crate) use mesh_link::{HandlerError, MeshNode, NodeKey, Registry, SendOptions};
pub(crate) use mesh_rudp::{Delivery, EndpointConfig, Transport, TransportConfig};
pub(crate) use serde::Serialize;
pub(crate) use std::future::Future;
pub(crate) use std::net::SocketAddr;
pub(crate) use std::pin::Pin;
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
pub(crate) use std::sync::Arc;
pub(crate) use std::time::{Duration, Instant};
pub(crate) use tokio::io::{AsyncReadExt, AsyncWriteExt};
pub(crate) use tokio::net::{TcpListener, TcpStream, UdpSocket};

pub(crate) use crate::contenders::*;
pub(crate) use crate::report::*;
pub(crate) use crate::{Args, BenchFuture};
