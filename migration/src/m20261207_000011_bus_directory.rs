//! The bus directory (issue 18): which nodes have sessions of which users, so that a node
//! publishes an event once per destination node instead of once per recipient.
//!
//! - `bus_nodes(node_id, seen_at)`: every process with a RabbitMQ link, and when it last
//!   said it was alive (ms since the epoch). A node missing its heartbeats past
//!   `bus.node_ttl_secs` is swept with its directory rows.
//! - `bus_directory(user_id, node_id)`: one row per user and node while the user has a
//!   session (or a notification stream) there.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("bus_nodes")
                .col(ColumnDef::new("node_id").string_len(64).not_null().primary_key())
                .col(ColumnDef::new("seen_at").big_integer().not_null())
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("bus_directory")
                .col(ColumnDef::new("user_id").uuid().not_null())
                .col(ColumnDef::new("node_id").string_len(64).not_null())
                .primary_key(Index::create().col("user_id").col("node_id"))
                .to_owned(),
        )
        .await?;
        m.create_index(Index::create().name("idx_bus_directory_node").table("bus_directory").col("node_id").to_owned())
            .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("bus_directory").to_owned()).await?;
        m.drop_table(Table::drop().table("bus_nodes").to_owned()).await
    }
}
