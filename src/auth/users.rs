//! The users repository: accounts and their credentials.

use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter};
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
            display_key: Set(display_name.as_str().to_lowercase().chars().take(64).collect()),
            password_hash: Set(password_hash),
            created_at: Set(now),
            updated_at: Set(now),
        };
        match model.insert(&self.db).await {
            Ok(m) => Ok(m.into()),
            Err(e) if crate::storage::is_unique_violation(&e) => Err(CreateUserError::UsernameTaken),
            Err(e) => Err(e.into()),
        }
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

    /// The user and password hash for a login, if the username exists.
    pub async fn find_credentials(&self, username: &Username) -> Result<Option<(User, String)>, DbErr> {
        let found = user::Entity::find().filter(user::Column::Username.eq(username.as_str())).one(&self.db).await?;
        Ok(found.map(|m| {
            let hash = m.password_hash.clone();
            (User::from(m), hash)
        }))
    }
}
