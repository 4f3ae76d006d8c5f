"""fastapi-users with its JWT strategy: the peer that `make bench` measures beside Gatehouse.

Set up as close to Gatehouse as the library allows: argon2id with the same
parameters (the harness passes Gatehouse's), access tokens signed with EdDSA and
valid for 15 minutes, and users in a database of the same MariaDB server.

Environment:
    PEER_DATABASE_URL        SQLAlchemy URL, mysql+aiomysql://USER:PASSWORD@127.0.0.1:PORT/DATABASE
    PEER_KEY_FILE            PEM file with the Ed25519 private key that signs access tokens
    PEER_ARGON2_MEMORY_KIB   argon2id memory in KiB
    PEER_ARGON2_TIME_COST    argon2id passes
    PEER_ARGON2_PARALLELISM  argon2id lanes

`python app.py create-tables` creates the user table; then serve with uvicorn.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from fastapi import Depends, FastAPI
from fastapi_users import BaseUserManager, FastAPIUsers, UUIDIDMixin, schemas
from fastapi_users.authentication import AuthenticationBackend, BearerTransport, JWTStrategy
from fastapi_users.password import PasswordHelper
from fastapi_users_db_sqlalchemy import SQLAlchemyBaseUserTableUUID, SQLAlchemyUserDatabase
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

ACCESS_TOKEN_SECONDS = 900


class Base(DeclarativeBase):
    pass


class User(SQLAlchemyBaseUserTableUUID, Base):
    pass


class UserRead(schemas.BaseUser[uuid.UUID]):
    pass


class UserCreate(schemas.BaseUserCreate):
    pass


class UserUpdate(schemas.BaseUserUpdate):
    pass


engine = create_async_engine(os.environ["PEER_DATABASE_URL"])
session_maker = async_sessionmaker(engine, expire_on_commit=False)

# pwdlib's Argon2Hasher passes these to argon2-cffi; its defaults are t=3, m=65536, p=4.
password_helper = PasswordHelper(PasswordHash((Argon2Hasher(
    time_cost=int(os.environ["PEER_ARGON2_TIME_COST"]),
    memory_cost=int(os.environ["PEER_ARGON2_MEMORY_KIB"]),
    parallelism=int(os.environ["PEER_ARGON2_PARALLELISM"]),
),)))

_private_key = serialization.load_pem_private_key(Path(os.environ["PEER_KEY_FILE"]).read_bytes(), password=None)
_private_pem = _private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()).decode()
_public_pem = _private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo).decode()


async def get_async_session() -> AsyncGenerator[AsyncSession, None]:
    async with session_maker() as session:
        yield session


async def get_user_db(session: AsyncSession = Depends(get_async_session)):
    yield SQLAlchemyUserDatabase(session, User)


class UserManager(UUIDIDMixin, BaseUserManager[User, uuid.UUID]):
    pass


async def get_user_manager(user_db: SQLAlchemyUserDatabase = Depends(get_user_db)):
    yield UserManager(user_db, password_helper)


def get_jwt_strategy() -> JWTStrategy:
    return JWTStrategy(secret=_private_pem, lifetime_seconds=ACCESS_TOKEN_SECONDS, algorithm="EdDSA",
                       public_key=_public_pem)


auth_backend = AuthenticationBackend(name="jwt", transport=BearerTransport(tokenUrl="auth/jwt/login"),
                                     get_strategy=get_jwt_strategy)
fastapi_users = FastAPIUsers[User, uuid.UUID](get_user_manager, [auth_backend])

app = FastAPI()
app.include_router(fastapi_users.get_auth_router(auth_backend), prefix="/auth/jwt")
app.include_router(fastapi_users.get_register_router(UserRead, UserCreate), prefix="/auth")
app.include_router(fastapi_users.get_users_router(UserRead, UserUpdate), prefix="/users")


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


async def create_tables() -> None:
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    await engine.dispose()


if __name__ == "__main__":
    if sys.argv[1:] != ["create-tables"]:
        sys.exit("usage: app.py create-tables")
    asyncio.run(create_tables())
