//! [`AppError`]: every way a command can fail, and the exit code each one means.

use crate::config::ConfigError;
use crate::db::{DbError, MigrateError, RegistryError};
use crate::service::ServeError;
use crate::tenants::TenantAdminError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The configuration file or environment is invalid (exit code 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A bad argument (exit code 2).
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error(transparent)]
    Database(#[from] DbError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Tenant(#[from] TenantAdminError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("{0}")]
    Events(String),
    #[error("cannot read input: {0}")]
    Input(#[from] std::io::Error),
    #[error("cannot write output: {0}")]
    Output(String),
}

impl AppError {
    /// 2 for what the operator must fix in the configuration or the command line, 1 for
    /// everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Config(_) | AppError::Usage(_) => 2,
            AppError::Serve(ServeError::Refused(_))
            | AppError::Migrate(MigrateError::Refused(_)) => 2,
            AppError::Database(e) if e.is_configuration() => 2,
            AppError::Tenant(TenantAdminError::Invalid(_) | TenantAdminError::Csv(_)) => 2,
            _ => 1,
        }
    }
}
