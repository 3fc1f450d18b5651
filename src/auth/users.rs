//! The users repository: accounts and their credentials.

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
};
use serde::Serialize;

use crate::domain::{DisplayName, UserId, Username};
use crate::storage::entities::user;

/// A user as shown in contact lists and search results (as everyone may see them).
#[derive(Debug, Clone, Serialize, salvo::oapi::ToSchema)]
#[salvo(schema(name = UserRef))]
pub struct PublicUser {
    #[salvo(schema(value_type = String))]
    pub id: UserId,
    pub username: String,
    pub display_name: String,
}

impl From<user::Model> for PublicUser {
    fn from(u: user::Model) -> Self {
        Self { id: UserId(u.id), username: u.username, display_name: u.display_name }
    }
}

/// A user as others may see it: never the password hash. (In the API: the caller, or a
/// new account.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, salvo::oapi::ToSchema)]
#[salvo(schema(name = UserOut))]
pub struct User {
    #[salvo(schema(value_type = String))]
    pub id: UserId,
    pub username: String,
    pub display_name: String,
    pub created_at: i64,
}

impl From<user::Model> for User {
    fn from(m: user::Model) -> Self {
        Self { id: UserId(m.id), username: m.username, display_name: m.display_name, created_at: m.created_at }
    }
}

/// Why a user could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    #[error("username taken")]
    UsernameTaken,
    #[error(transparent)]
    Db(#[from] DbErr),
}

#[derive(Clone, Debug)]
pub struct UserRepo {
    db: DatabaseConnection,
}

impl UserRepo {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Inserts a user; [`CreateUserError::UsernameTaken`] if the (lower-cased) name exists.
    pub async fn create(
        &self,
        username: &Username,
        display_name: &DisplayName,
        password_hash: String,
        now: i64,
    ) -> Result<User, CreateUserError> {
        let model = user::ActiveModel {
            id: Set(UserId::new().0),
            username: Set(username.as_str().to_owned()),
            display_name: Set(display_name.as_str().to_owned()),
            display_key: Set(display_key(display_name)),
            password_hash: Set(password_hash),
            created_at: Set(now),
            updated_at: Set(now),
            disabled_at: Set(None),
            deleted_at: Set(None),
            last_seen_at: Set(None),
        };
        let txn = self.db.begin().await?;
        let user = match model.insert(&txn).await {
            Ok(m) => User::from(m),
            Err(e) if crate::storage::is_unique_violation(&e) => return Err(CreateUserError::UsernameTaken),
            Err(e) => return Err(e.into()),
        };
        set_name_words(&txn, user.id, Some(display_name.as_str())).await?;
        txn.commit().await?;
        Ok(user)
    }

    /// The user with this id, if any.
    pub async fn find(&self, id: UserId) -> Result<Option<User>, DbErr> {
        Ok(user::Entity::find_by_id(id.0).one(&self.db).await?.map(User::from))
    }

    /// The user with this (lower-cased) username, if any.
    pub async fn find_by_username(&self, username: &Username) -> Result<Option<User>, DbErr> {
        let found = user::Entity::find().filter(user::Column::Username.eq(username.as_str())).one(&self.db).await?;
        Ok(found.map(User::from))
    }

    /// The user and credentials for a login, if the username exists.
    pub async fn find_credentials(&self, username: &Username) -> Result<Option<(User, Credentials)>, DbErr> {
        let found = user::Entity::find().filter(user::Column::Username.eq(username.as_str())).one(&self.db).await?;
        Ok(found.map(credentials))
    }

    /// The user and credentials of `id`, if the account exists.
    pub async fn credentials_of(&self, id: UserId) -> Result<Option<(User, Credentials)>, DbErr> {
        Ok(user::Entity::find_by_id(id.0).one(&self.db).await?.map(credentials))
    }

    /// Replaces the password hash; false if the account is gone.
    pub async fn set_password(&self, id: UserId, password_hash: String, now: i64) -> Result<bool, DbErr> {
        let res = user::Entity::update_many()
            .col_expr(user::Column::PasswordHash, Expr::value(password_hash))
            .col_expr(user::Column::UpdatedAt, Expr::value(now))
            .filter(user::Column::Id.eq(id.0))
            .exec(&self.db)
            .await?;
        Ok(res.rows_affected == 1)
    }

    /// Renames the account (the display name others see); the user, or `None` if gone.
    pub async fn set_display_name(&self, id: UserId, name: &DisplayName, now: i64) -> Result<Option<User>, DbErr> {
        let txn = self.db.begin().await?;
        let res = user::Entity::update_many()
            .col_expr(user::Column::DisplayName, Expr::value(name.as_str()))
            .col_expr(user::Column::DisplayKey, Expr::value(display_key(name)))
            .col_expr(user::Column::UpdatedAt, Expr::value(now))
            .filter(user::Column::Id.eq(id.0))
            .exec(&txn)
            .await?;
        if res.rows_affected != 1 {
            return Ok(None);
        }
        set_name_words(&txn, id, Some(name.as_str())).await?;
        txn.commit().await?;
        self.find(id).await
    }

    /// Disables (`Some(now)`) or enables (`None`) the account; false if it does not exist.
    pub async fn set_disabled(&self, id: UserId, disabled_at: Option<i64>, now: i64) -> Result<bool, DbErr> {
        let res = user::Entity::update_many()
            .col_expr(user::Column::DisabledAt, Expr::value(disabled_at))
            .col_expr(user::Column::UpdatedAt, Expr::value(now))
            .filter(user::Column::Id.eq(id.0))
            .exec(&self.db)
            .await?;
        Ok(res.rows_affected == 1)
    }

    /// Deletes the account as people see it: the row stays (messages the other
    /// participants keep name it as their sender) without a name, display name or
    /// password, disabled, under a username no one can register or look up
    /// ([`deleted_username`]: the name is free to register again). False if it does not exist or was deleted already.
    pub async fn anonymize(&self, id: UserId, now: i64) -> Result<bool, DbErr> {
        let res = user::Entity::update_many()
            .col_expr(user::Column::Username, Expr::value(deleted_username(id)))
            .col_expr(user::Column::DisplayName, Expr::value(DELETED_NAME))
            .col_expr(user::Column::DisplayKey, Expr::value(""))
            .col_expr(user::Column::PasswordHash, Expr::value("!"))
            .col_expr(user::Column::DisabledAt, Expr::value(now))
            .col_expr(user::Column::DeletedAt, Expr::value(now))
            .col_expr(user::Column::UpdatedAt, Expr::value(now))
            .filter(user::Column::Id.eq(id.0))
            .filter(user::Column::DeletedAt.is_null())
            .exec(&self.db)
            .await?;
        set_name_words(&self.db, id, None).await?;
        Ok(res.rows_affected == 1)
    }

    /// Accounts whose username or display name starts with `query` (case-insensitive;
    /// every account without one), by username, at most `limit`, with their state.
    pub async fn list(&self, query: Option<&str>, limit: u64) -> Result<Vec<(User, Option<i64>)>, DbErr> {
        let mut q = user::Entity::find().filter(user::Column::DeletedAt.is_null());
        if let Some(prefix) = query.map(str::to_lowercase).filter(|p| !p.is_empty()) {
            // The query is text, not a pattern: `%`, `_` and the escape itself match
            // themselves.
            let mut escaped = String::with_capacity(prefix.len() + 1);
            for c in prefix.chars() {
                if matches!(c, '\\' | '%' | '_') {
                    escaped.push('\\');
                }
                escaped.push(c);
            }
            escaped.push('%');
            let like = || sea_orm::sea_query::LikeExpr::new(escaped.clone()).escape('\\');
            q = q.filter(
                sea_orm::Condition::any()
                    .add(Expr::col(user::Column::Username).like(like()))
                    .add(Expr::col(user::Column::DisplayKey).like(like())),
            );
        }
        let rows = q.order_by_asc(user::Column::Username).limit(limit).all(&self.db).await?;
        Ok(rows.into_iter().map(|m| (m.disabled_at, User::from(m))).map(|(d, u)| (u, d)).collect())
    }
}

/// The username a deleted account keeps: `~` (outside the username rules, so no one can
/// register or look it up) and 31 hex digits of its id (unique; 32 characters fit the
/// column).
pub fn deleted_username(id: UserId) -> String {
    let hex = id.0.simple().to_string();
    format!("~{}", &hex[..31])
}

/// The display name a deleted account shows where its messages remain.
pub const DELETED_NAME: &str = "Deleted user";

/// What a login checks besides the user.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub password_hash: String,
    pub disabled_at: Option<i64>,
}

/// Replaces the indexed words of `user`'s display name (`None`: none, a deleted account)
/// with those of `name` ([`migration::m20261207_000008_user_name_words::name_words`]).
async fn set_name_words<C: sea_orm::ConnectionTrait>(db: &C, user: UserId, name: Option<&str>) -> Result<(), DbErr> {
    use sea_orm::sea_query::{Alias, Query};
    let table = Alias::new("user_name_words");
    let delete =
        Query::delete().from_table(table.clone()).and_where(Expr::col(Alias::new("user_id")).eq(user.0)).to_owned();
    db.execute(&delete).await?;
    let words = name.map(migration::m20261207_000008_user_name_words::name_words).unwrap_or_default();
    if !words.is_empty() {
        let mut insert = Query::insert();
        insert.into_table(table).columns([Alias::new("word"), Alias::new("user_id")]);
        for w in words {
            insert.values_panic([w.into(), user.0.into()]);
        }
        db.execute(&insert).await?;
    }
    Ok(())
}

fn credentials(m: user::Model) -> (User, Credentials) {
    let c = Credentials { password_hash: m.password_hash.clone(), disabled_at: m.disabled_at };
    (User::from(m), c)
}

/// The lower-cased display name that search matches on.
pub fn display_key(name: &DisplayName) -> String {
    name.as_str().to_lowercase().chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_accounts_username_fits_and_cannot_be_registered_or_looked_up() {
        let id = UserId::new();
        let name = deleted_username(id);
        assert_eq!(name.chars().count(), 32);
        assert!(Username::parse(&name).is_err(), "{name}");
        assert_ne!(deleted_username(UserId::new()), name);
    }
}
