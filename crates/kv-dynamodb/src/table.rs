//! Table checks and on-demand creation.

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::describe_table::DescribeTableError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    StreamSpecification, StreamViewType, TableDescription, TableStatus, TimeToLiveSpecification,
    TimeToLiveStatus,
};
use kv_core::{Error, Result};

use crate::config::Config;
use crate::item::{ATTR_EXPIRES, ATTR_PK, ATTR_SK, BACKEND, sdk_error};

/// How long `connect` waits for a table being created to become ACTIVE.
const ACTIVE_WAIT: Duration = Duration::from_secs(120);

/// What `connect` needs to know about the table.
#[derive(Debug)]
pub(crate) struct Description {
    /// The stream's ARN when the table has an enabled stream.
    pub stream_arn: Option<String>,
}

/// DescribeTable: `None` when the table does not exist.
pub(crate) async fn describe(client: &Client, config: &Config) -> Result<Option<TableDescription>> {
    match client
        .describe_table()
        .table_name(&config.table)
        .send()
        .await
    {
        Ok(out) => Ok(out.table),
        Err(err) => {
            if let Some(DescribeTableError::ResourceNotFoundException(_)) = err.as_service_error() {
                return Ok(None);
            }
            Err(sdk_error("describe_table", config.request_timeout, err))
        }
    }
}

/// Checks the table (creating it if asked and missing), waits until it is ACTIVE, makes sure
/// its TTL is on when we created it, and returns its stream.
pub(crate) async fn ensure(client: &Client, config: &Config) -> Result<Description> {
    let mut table = describe(client, config).await?;
    if table.is_none() {
        if !config.create_table {
            return Err(Error::Config(format!(
                "table {:?} does not exist (set create_table to create it)",
                config.table
            )));
        }
        create(client, config).await?;
    }
    let deadline = tokio::time::Instant::now() + ACTIVE_WAIT;
    loop {
        if let Some(description) = &table
            && description.table_status() == Some(&TableStatus::Active)
        {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout {
                backend: BACKEND,
                operation: "waiting for the table to become ACTIVE",
                after: ACTIVE_WAIT,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        table = describe(client, config).await?;
    }
    let description = table.expect("checked above");
    check_schema(config, &description)?;
    if config.create_table {
        enable_ttl(client, config).await?;
    }
    Ok(Description {
        stream_arn: stream_of(&description),
    })
}

/// The ARN of the table's stream, when it has an enabled one. A table deleted and created
/// again has a new stream with a new ARN.
pub(crate) fn stream_of(description: &TableDescription) -> Option<String> {
    description
        .stream_specification()
        .filter(|spec| spec.stream_enabled())
        .and_then(|_| description.latest_stream_arn())
        .map(str::to_owned)
}

/// The key schema must be `pk` (S, HASH) + `sk` (S, RANGE).
fn check_schema(config: &Config, description: &TableDescription) -> Result<()> {
    let key_of = |kind: KeyType| {
        description
            .key_schema()
            .iter()
            .find(|k| *k.key_type() == kind)
            .map(|k| k.attribute_name().to_owned())
    };
    let string_typed = |name: &str| {
        description
            .attribute_definitions()
            .iter()
            .any(|d| d.attribute_name() == name && *d.attribute_type() == ScalarAttributeType::S)
    };
    if key_of(KeyType::Hash).as_deref() != Some(ATTR_PK)
        || key_of(KeyType::Range).as_deref() != Some(ATTR_SK)
        || !string_typed(ATTR_PK)
        || !string_typed(ATTR_SK)
    {
        return Err(Error::Config(format!(
            "table {:?} must have the key schema {ATTR_PK} (S, HASH) + {ATTR_SK} (S, RANGE)",
            config.table
        )));
    }
    Ok(())
}

async fn create(client: &Client, config: &Config) -> Result<()> {
    let build = |e: aws_sdk_dynamodb::error::BuildError| Error::backend(BACKEND, e);
    let result = client
        .create_table()
        .table_name(&config.table)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(ATTR_PK)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build)?,
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(ATTR_SK)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build)?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(ATTR_PK)
                .key_type(KeyType::Hash)
                .build()
                .map_err(build)?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(ATTR_SK)
                .key_type(KeyType::Range)
                .build()
                .map_err(build)?,
        )
        .billing_mode(BillingMode::PayPerRequest)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .map_err(build)?,
        )
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        // Another handle created it at the same time: fine.
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception()) =>
        {
            Ok(())
        }
        Err(err) => Err(sdk_error("create_table", config.request_timeout, err)),
    }
}

/// Turns TTL on for `expires_at` unless it is on already (idempotent across racing handles).
async fn enable_ttl(client: &Client, config: &Config) -> Result<()> {
    let status = client
        .describe_time_to_live()
        .table_name(&config.table)
        .send()
        .await
        .map_err(|e| sdk_error("describe_time_to_live", config.request_timeout, e))?;
    let current = status.time_to_live_description();
    let on = current.is_some_and(|d| {
        matches!(
            d.time_to_live_status(),
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
        )
    });
    if on {
        if current.and_then(|d| d.attribute_name()) != Some(ATTR_EXPIRES) {
            tracing::warn!(
                table = %config.table,
                "the table's TTL attribute is not {ATTR_EXPIRES}: DynamoDB will not clean expired keys and tombstones"
            );
        }
        return Ok(());
    }
    let spec = TimeToLiveSpecification::builder()
        .attribute_name(ATTR_EXPIRES)
        .enabled(true)
        .build()
        .map_err(|e| Error::backend(BACKEND, e))?;
    match client
        .update_time_to_live()
        .table_name(&config.table)
        .time_to_live_specification(spec)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        // A racing handle enabled it first ("TimeToLive is already enabled").
        Err(err)
            if err.as_service_error().is_some_and(|e| {
                aws_sdk_dynamodb::error::ProvideErrorMetadata::message(e)
                    .is_some_and(|m| m.contains("already"))
            }) =>
        {
            Ok(())
        }
        Err(err) => Err(sdk_error(
            "update_time_to_live",
            config.request_timeout,
            err,
        )),
    }
}
