//! Images among stored files (issue 20): `files.image_width` and `files.image_height`,
//! set when the assembled bytes are a PNG, JPEG, GIF or WebP within the image limits
//! (as shown, after the EXIF orientation); null for every other file, and for files
//! stored before this migration, which stay attachments.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        let add = |col: &mut ColumnDef| Table::alter().table("files").add_column(col).to_owned();
        m.alter_table(add(ColumnDef::new("image_width").integer().null())).await?;
        m.alter_table(add(ColumnDef::new("image_height").integer().null())).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let drop = |col: &'static str| Table::alter().table("files").drop_column(col).to_owned();
        m.alter_table(drop("image_height")).await?;
        m.alter_table(drop("image_width")).await
    }
}
