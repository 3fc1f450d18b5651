//! The contacts repository: requests, contacts, blocks, and user search.
//!
//! One row per pair of users (`user_low < user_high`) carries the relation's state,
//! `pending → accepted | declined | cancelled`, `accepted → removed`, and back to
//! `pending` on a new request. Rows are never deleted. Every transition is a conditional
//! `UPDATE … WHERE state = <the state we saw>`, and the first request is an insert that
//! the pair's unique index arbitrates, so concurrent requests cannot both win: two users
//! asking each other at the same moment end up contacts, not with two pending requests.

use std::collections::{HashMap, HashSet};

use salvo::oapi::ToSchema;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use serde::Serialize;
use switchboard_actors::ports::{ContactChange, StoreError};
use switchboard_actors::states::{ContactChangeKind, ContactState, Relation};
use uuid::Uuid;

pub use crate::auth::users::PublicUser;
use crate::domain::UserId;
use crate::storage::entities::{block, contact, user};

use ContactState::{Accepted, Cancelled, Declined, Pending, Removed};

/// A row's state.
fn state_of(row: &contact::Model) -> Result<ContactState, DbErr> {
    crate::storage::stored(ContactState::parse, "contacts.state", &row.state)
}

/// Most attempts at a transition that keeps losing races (each loss means another
/// request moved the state; the next attempt sees the new one).
const ATTEMPTS: usize = 5;

/// Why a contact operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ContactError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    Conflict(&'static str),
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// A contact request (the pair's relation) as its users see it (`state`: `pending`,
/// `accepted`, `declined`, `cancelled`, `removed`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[salvo(schema(name = RequestOut))]
pub struct ContactRequest {
    #[salvo(schema(value_type = String))]
    pub id: Uuid,
    #[salvo(schema(value_type = String))]
    pub requester_id: UserId,
    #[salvo(schema(value_type = String))]
    pub addressee_id: UserId,
    #[salvo(schema(value_type = String))]
    pub state: ContactState,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ContactRequest {
    fn from_row(c: &contact::Model) -> Result<Self, DbErr> {
        let requester = c.requester_id;
        let addressee = if c.user_low == requester { c.user_high } else { c.user_low };
        Ok(Self {
            id: c.id,
            requester_id: UserId(requester),
            addressee_id: UserId(addressee),
            state: state_of(c)?,
            created_at: c.created_at,
            updated_at: c.updated_at,
        })
    }

    /// The bus event announcing this request's change.
    pub fn change(&self, kind: ContactChangeKind) -> ContactChange {
        ContactChange {
            kind,
            request_id: self.id,
            requester_id: self.requester_id,
            addressee_id: self.addressee_id,
            state: self.state,
        }
    }
}

/// What a request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// A new pending request.
    Created,
    /// The same request was already pending, or they are contacts already.
    Unchanged,
    /// The other user had asked first: now contacts.
    Accepted,
}

/// A pending request with the other user's public fields.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[salvo(schema(name = RequestWithUser))]
pub struct RequestView {
    #[serde(flatten)]
    pub request: ContactRequest,
    pub user: PublicUser,
}

/// An accepted contact (or a blocked user: `since` is when the block was made).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[salvo(schema(name = Contact))]
pub struct ContactView {
    pub user: PublicUser,
    pub since: i64,
    /// When the contact's last connection closed (`null`: never, or not a contact).
    pub last_seen_at: Option<i64>,
}

/// A search hit and how it relates to the caller.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SearchHit {
    #[serde(flatten)]
    pub user: PublicUser,
    /// `none`, `pending_in`, `pending_out` or `contact`.
    #[salvo(schema(value_type = String))]
    pub relation: Relation,
}

pub fn pair(a: UserId, b: UserId) -> (Uuid, Uuid) {
    if a.0 < b.0 { (a.0, b.0) } else { (b.0, a.0) }
}

#[derive(Clone, Debug)]
pub struct ContactRepo {
    db: DatabaseConnection,
}

impl ContactRepo {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    async fn row(&self, a: UserId, b: UserId) -> Result<Option<contact::Model>, DbErr> {
        let (low, high) = pair(a, b);
        contact::Entity::find()
            .filter(contact::Column::UserLow.eq(low))
            .filter(contact::Column::UserHigh.eq(high))
            .one(&self.db)
            .await
    }

    /// Moves the row from `from` to `to` (with `requester`, if given) unless someone else
    /// moved it first; true if this call made the transition.
    async fn transition(
        &self,
        id: Uuid,
        from: ContactState,
        to: ContactState,
        requester: Option<Uuid>,
    ) -> Result<bool, DbErr> {
        let mut q = contact::Entity::update_many()
            .col_expr(contact::Column::State, Expr::value(to.as_str()))
            .col_expr(contact::Column::UpdatedAt, Expr::value(crate::now_ms()))
            .filter(contact::Column::Id.eq(id))
            .filter(contact::Column::State.eq(from.as_str()));
        if let Some(r) = requester {
            q = q.col_expr(contact::Column::RequesterId, Expr::value(r));
        }
        Ok(q.exec(&self.db).await?.rows_affected == 1)
    }

    /// True if `blocker` has blocked `blocked`.
    pub async fn has_blocked(&self, blocker: UserId, blocked: UserId) -> Result<bool, DbErr> {
        Ok(block::Entity::find_by_id((blocker.0, blocked.0)).one(&self.db).await?.is_some())
    }

    /// Sends (or re-sends) a request from `me` to `target`.
    pub async fn request(&self, me: UserId, target: UserId) -> Result<(ContactRequest, RequestOutcome), ContactError> {
        if me == target {
            return Err(ContactError::Forbidden("you cannot add yourself"));
        }
        if user::Entity::find_by_id(target.0).one(&self.db).await?.is_none() || self.has_blocked(target, me).await? {
            // A user who blocked you is, to you, not there.
            return Err(ContactError::NotFound);
        }
        if self.has_blocked(me, target).await? {
            return Err(ContactError::Conflict("you blocked this user; unblock them first"));
        }
        let (low, high) = pair(me, target);
        for _ in 0..ATTEMPTS {
            let now = crate::now_ms();
            let inserted = contact::Entity::insert(contact::ActiveModel {
                id: Set(Uuid::now_v7()),
                user_low: Set(low),
                user_high: Set(high),
                requester_id: Set(me.0),
                state: Set(Pending.to_string()),
                created_at: Set(now),
                updated_at: Set(now),
            })
            .on_conflict(
                OnConflict::columns([contact::Column::UserLow, contact::Column::UserHigh]).do_nothing().to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
            let Some(row) = self.row(me, target).await? else { continue };
            if inserted == 1 {
                return Ok((ContactRequest::from_row(&row)?, RequestOutcome::Created));
            }
            match state_of(&row)? {
                Pending if row.requester_id == me.0 => {
                    return Ok((ContactRequest::from_row(&row)?, RequestOutcome::Unchanged));
                }
                Accepted => return Ok((ContactRequest::from_row(&row)?, RequestOutcome::Unchanged)),
                Pending => {
                    if self.transition(row.id, Pending, Accepted, None).await? {
                        let row = self.row(me, target).await?.ok_or(ContactError::NotFound)?;
                        return Ok((ContactRequest::from_row(&row)?, RequestOutcome::Accepted));
                    }
                }
                old => {
                    if self.transition(row.id, old, Pending, Some(me.0)).await? {
                        let row = self.row(me, target).await?.ok_or(ContactError::NotFound)?;
                        return Ok((ContactRequest::from_row(&row)?, RequestOutcome::Created));
                    }
                }
            }
        }
        Err(ContactError::Conflict("the request changed concurrently; try again"))
    }

    async fn by_id_for(&self, me: UserId, id: Uuid) -> Result<contact::Model, ContactError> {
        let row = contact::Entity::find_by_id(id).one(&self.db).await?.ok_or(ContactError::NotFound)?;
        if row.user_low != me.0 && row.user_high != me.0 {
            return Err(ContactError::NotFound); // not yours: as if it did not exist
        }
        Ok(row)
    }

    /// The addressee answers a pending request. Answering the same way twice is fine.
    pub async fn answer(&self, me: UserId, id: Uuid, accept: bool) -> Result<(ContactRequest, bool), ContactError> {
        let to = if accept { Accepted } else { Declined };
        self.settle(me, id, false, to, "only the user asked can answer a request").await
    }

    /// The requester withdraws a pending request. Cancelling twice is fine.
    pub async fn cancel(&self, me: UserId, id: Uuid) -> Result<(ContactRequest, bool), ContactError> {
        self.settle(me, id, true, Cancelled, "only the user who sent a request can cancel it").await
    }

    /// Moves a pending request of `me`'s to `to`, if `me` is on the allowed side
    /// (`as_requester`). Finding it in `to` already is success without a change; in any
    /// other state it is a conflict. Returns the request and whether this call changed it.
    async fn settle(
        &self,
        me: UserId,
        id: Uuid,
        as_requester: bool,
        to: ContactState,
        wrong_side: &'static str,
    ) -> Result<(ContactRequest, bool), ContactError> {
        let row = self.by_id_for(me, id).await?;
        if (row.requester_id == me.0) != as_requester {
            return Err(ContactError::Forbidden(wrong_side));
        }
        let changed = self.transition(id, Pending, to, None).await?;
        let row = self.by_id_for(me, id).await?;
        if !changed && state_of(&row)? != to {
            return Err(ContactError::Conflict("this request is no longer pending"));
        }
        Ok((ContactRequest::from_row(&row)?, changed))
    }

    /// Either side ends an accepted contact. Removing twice is fine.
    pub async fn remove(&self, me: UserId, other: UserId) -> Result<(ContactRequest, bool), ContactError> {
        let row = self.row(me, other).await?.ok_or(ContactError::NotFound)?;
        let changed = self.transition(row.id, Accepted, Removed, None).await?;
        let row = self.row(me, other).await?.ok_or(ContactError::NotFound)?;
        if !changed && state_of(&row)? != Removed {
            return Err(ContactError::NotFound);
        }
        Ok((ContactRequest::from_row(&row)?, changed))
    }

    /// `me` blocks `other`: any relation between them ends (contact removed, pending
    /// request cancelled or declined), and `other` can no longer request, message or find
    /// `me`. Returns the ended relation, if there was one.
    pub async fn block(&self, me: UserId, other: UserId) -> Result<Option<ContactRequest>, ContactError> {
        if me == other {
            return Err(ContactError::Forbidden("you cannot block yourself"));
        }
        if user::Entity::find_by_id(other.0).one(&self.db).await?.is_none() {
            return Err(ContactError::NotFound);
        }
        block::Entity::insert(block::ActiveModel {
            blocker_id: Set(me.0),
            blocked_id: Set(other.0),
            created_at: Set(crate::now_ms()),
        })
        .on_conflict(OnConflict::columns([block::Column::BlockerId, block::Column::BlockedId]).do_nothing().to_owned())
        .exec_without_returning(&self.db)
        .await?;
        for _ in 0..ATTEMPTS {
            let Some(row) = self.row(me, other).await? else { return Ok(None) };
            let from = state_of(&row)?;
            let to = match from {
                Accepted => Removed,
                Pending if row.requester_id == me.0 => Cancelled,
                Pending => Declined,
                _ => return Ok(None),
            };
            if self.transition(row.id, from, to, None).await? {
                let row = self.row(me, other).await?.ok_or(ContactError::NotFound)?;
                return Ok(Some(ContactRequest::from_row(&row)?));
            }
        }
        Err(ContactError::Conflict("the relation changed concurrently; try again"))
    }

    /// Lifts a block; the users are not contacts again (they may request anew).
    pub async fn unblock(&self, me: UserId, other: UserId) -> Result<(), ContactError> {
        block::Entity::delete_by_id((me.0, other.0)).exec(&self.db).await?;
        Ok(())
    }

    async fn users(&self, ids: Vec<Uuid>) -> Result<HashMap<Uuid, user::Model>, DbErr> {
        let rows = user::Entity::find().filter(user::Column::Id.is_in(ids)).all(&self.db).await?;
        Ok(rows.into_iter().map(|u| (u.id, u)).collect())
    }

    async fn rows_of(&self, me: UserId, states: &[ContactState]) -> Result<Vec<contact::Model>, DbErr> {
        contact::Entity::find()
            .filter(Condition::any().add(contact::Column::UserLow.eq(me.0)).add(contact::Column::UserHigh.eq(me.0)))
            .filter(contact::Column::State.is_in(states.iter().map(|s| s.as_str())))
            .order_by_desc(contact::Column::UpdatedAt)
            .all(&self.db)
            .await
    }

    /// Every relation row of `user` (any state): `(request id, the other user, state,
    /// requester)`.
    pub async fn relations_of(&self, user: UserId) -> Result<Vec<(Uuid, UserId, String, UserId)>, DbErr> {
        let rows = contact::Entity::find()
            .filter(Condition::any().add(contact::Column::UserLow.eq(user.0)).add(contact::Column::UserHigh.eq(user.0)))
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|c| {
                let other = if c.user_low == user.0 { c.user_high } else { c.user_low };
                (c.id, UserId(other), c.state, UserId(c.requester_id))
            })
            .collect())
    }

    /// Deletes every contact relation and block that involves `user` (an account being
    /// deleted); returns how many rows went.
    pub async fn forget(&self, user: UserId) -> Result<u64, DbErr> {
        let contacts = contact::Entity::delete_many()
            .filter(Condition::any().add(contact::Column::UserLow.eq(user.0)).add(contact::Column::UserHigh.eq(user.0)))
            .exec(&self.db)
            .await?;
        let blocks = block::Entity::delete_many()
            .filter(Condition::any().add(block::Column::BlockerId.eq(user.0)).add(block::Column::BlockedId.eq(user.0)))
            .exec(&self.db)
            .await?;
        Ok(contacts.rows_affected + blocks.rows_affected)
    }

    /// The caller's accepted contacts, most recent first.
    pub async fn contacts(&self, me: UserId) -> Result<Vec<ContactView>, DbErr> {
        let rows = self.rows_of(me, &[Accepted]).await?;
        let other = |c: &contact::Model| if c.user_low == me.0 { c.user_high } else { c.user_low };
        let mut users = self.users(rows.iter().map(other).collect()).await?;
        Ok(rows
            .iter()
            .filter_map(|c| {
                users.remove(&other(c)).map(|u| ContactView {
                    last_seen_at: u.last_seen_at,
                    user: u.into(),
                    since: c.updated_at,
                })
            })
            .collect())
    }

    /// The users `me` blocked, newest first (at most 1,000), with when.
    pub async fn blocked(&self, me: UserId) -> Result<Vec<ContactView>, DbErr> {
        let rows = block::Entity::find()
            .filter(block::Column::BlockerId.eq(me.0))
            .order_by_desc(block::Column::CreatedAt)
            .limit(1000)
            .all(&self.db)
            .await?;
        let mut users = self.users(rows.iter().map(|b| b.blocked_id).collect()).await?;
        Ok(rows
            .iter()
            .filter_map(|b| {
                users.remove(&b.blocked_id).map(|u| ContactView {
                    user: u.into(),
                    since: b.created_at,
                    last_seen_at: None,
                })
            })
            .collect())
    }

    /// Pending requests: `(incoming, outgoing)`.
    pub async fn requests(&self, me: UserId) -> Result<(Vec<RequestView>, Vec<RequestView>), DbErr> {
        let rows = self.rows_of(me, &[Pending]).await?;
        let other = |c: &contact::Model| if c.user_low == me.0 { c.user_high } else { c.user_low };
        let users = self.users(rows.iter().map(other).collect()).await?;
        let (mut incoming, mut outgoing) = (vec![], vec![]);
        for c in &rows {
            let Some(u) = users.get(&other(c)) else { continue };
            let view = RequestView { request: ContactRequest::from_row(c)?, user: u.clone().into() };
            if c.requester_id == me.0 { outgoing.push(view) } else { incoming.push(view) }
        }
        Ok((incoming, outgoing))
    }

    /// Users whose username or display name starts with `prefix` (lower-case), excluding
    /// the caller and users who blocked the caller, ordered by username, after `cursor`
    /// (a username). Returns at most `limit` hits and the cursor of the next page.
    pub async fn search(
        &self,
        me: UserId,
        prefix: &str,
        limit: u64,
        cursor: Option<&str>,
    ) -> Result<(Vec<SearchHit>, Option<String>), DbErr> {
        // Every string that starts with `prefix` sorts between it and prefix + U+10FFFF
        // in byte order, so each test is a range scan of an index.
        let high = format!("{prefix}\u{10FFFF}");
        let range = |col: &str| -> Condition {
            let expr = match self.db.get_database_backend() {
                DbBackend::Postgres => Expr::cust_with_values(
                    format!(r#""{col}" COLLATE "C" >= $1 AND "{col}" COLLATE "C" < $2"#),
                    [prefix, high.as_str()],
                ),
                _ => Expr::cust_with_values(format!(r#""{col}" >= ? AND "{col}" < ?"#), [prefix, high.as_str()]),
            };
            Condition::all().add(expr)
        };
        let blocked_me = Query::select()
            .column(block::Column::BlockerId)
            .from(block::Entity)
            .and_where(block::Column::BlockedId.eq(me.0))
            .to_owned();
        // A word of the display name after the first ("Becker" for "Tom Becker").
        let word_starts = Query::select()
            .column(sea_orm::sea_query::Alias::new("user_id"))
            .from(sea_orm::sea_query::Alias::new("user_name_words"))
            .cond_where(range("word"))
            .to_owned();
        let mut q = user::Entity::find()
            .filter(
                Condition::any()
                    .add(range("username"))
                    .add(range("display_key"))
                    .add(user::Column::Id.in_subquery(word_starts)),
            )
            .filter(user::Column::Id.ne(me.0))
            .filter(user::Column::DeletedAt.is_null())
            .filter(user::Column::Id.not_in_subquery(blocked_me));
        if let Some(c) = cursor {
            q = q.filter(user::Column::Username.gt(c));
        }
        let mut rows = q.order_by_asc(user::Column::Username).limit(limit + 1).all(&self.db).await?;
        let next = if rows.len() as u64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|u| u.username.clone())
        } else {
            None
        };
        let ids: Vec<Uuid> = rows.iter().map(|u| u.id).collect();
        let relations = self.relations(me, &ids).await?;
        let hits = rows
            .into_iter()
            .map(|u| {
                let relation = relations.get(&u.id).copied().unwrap_or(Relation::None);
                SearchHit { user: u.into(), relation }
            })
            .collect();
        Ok((hits, next))
    }

    /// How each of `others` relates to `me`.
    async fn relations(&self, me: UserId, others: &[Uuid]) -> Result<HashMap<Uuid, Relation>, DbErr> {
        if others.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = contact::Entity::find()
            .filter(
                Condition::any()
                    .add(
                        Condition::all()
                            .add(contact::Column::UserLow.eq(me.0))
                            .add(contact::Column::UserHigh.is_in(others.to_vec())),
                    )
                    .add(
                        Condition::all()
                            .add(contact::Column::UserHigh.eq(me.0))
                            .add(contact::Column::UserLow.is_in(others.to_vec())),
                    ),
            )
            .filter(contact::Column::State.is_in([Pending.as_str(), Accepted.as_str()]))
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|c| {
                let other = if c.user_low == me.0 { c.user_high } else { c.user_low };
                let rel = match (c.state == Accepted.as_str(), c.requester_id == me.0) {
                    (true, _) => Relation::Contact,
                    (_, true) => Relation::PendingOut,
                    _ => Relation::PendingIn,
                };
                (other, rel)
            })
            .collect())
    }
}

/// The messaging rule, in one place: `from` may message `to` only if they are accepted
/// contacts and neither has blocked the other.
pub async fn may_message(db: &DatabaseConnection, from: UserId, to: UserId) -> Result<(), StoreError> {
    let allowed = messageable_pairs(db, &[pair(from, to)]).await.map_err(|e| StoreError::Unavailable(e.to_string()))?;
    if allowed.is_empty() {
        return Err(StoreError::Forbidden(NOT_A_CONTACT));
    }
    Ok(())
}

/// Why a message is refused: the one messaging rule, [`messageable_pairs`].
pub const NOT_A_CONTACT: &str = "not a contact (or blocked): you cannot message this user";

/// Of the given pairs (`(low, high)`), those that may message each other: an accepted
/// contact and no block either way. One query however many pairs (the committer checks a
/// whole batch of messages with it, inside the batch's transaction).
pub async fn messageable_pairs<C: ConnectionTrait>(
    db: &C,
    pairs: &[(Uuid, Uuid)],
) -> Result<HashSet<(Uuid, Uuid)>, DbErr> {
    if pairs.is_empty() {
        return Ok(HashSet::new());
    }
    let side = |blocker: contact::Column, blocked: contact::Column| {
        Condition::all()
            .add(Expr::col((block::Entity, block::Column::BlockerId)).equals((contact::Entity, blocker)))
            .add(Expr::col((block::Entity, block::Column::BlockedId)).equals((contact::Entity, blocked)))
    };
    let either_blocked = Query::select()
        .expr(Expr::val(1))
        .from(block::Entity)
        .cond_where(
            Condition::any()
                .add(side(contact::Column::UserLow, contact::Column::UserHigh))
                .add(side(contact::Column::UserHigh, contact::Column::UserLow)),
        )
        .to_owned();
    let any_pair = pairs.iter().fold(Condition::any(), |c, (low, high)| {
        c.add(Condition::all().add(contact::Column::UserLow.eq(*low)).add(contact::Column::UserHigh.eq(*high)))
    });
    let rows: Vec<(Uuid, Uuid)> = contact::Entity::find()
        .select_only()
        .column(contact::Column::UserLow)
        .column(contact::Column::UserHigh)
        .filter(any_pair)
        .filter(contact::Column::State.eq(Accepted.as_str()))
        .filter(Expr::exists(either_blocked).not())
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows.into_iter().collect())
}
