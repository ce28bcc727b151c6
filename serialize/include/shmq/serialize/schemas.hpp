// The schemas shmq ships (serialize/schemas/*.fbs), compiled by flatc in the build, declared as
// root types for Writer/Reader.
//   shmq::schema::Tick   market-data tick, file_identifier "TICK"
//   shmq::schema::Order  order message,    file_identifier "ORDR"
#pragma once

#include <shmq/schema/order_generated.h>
#include <shmq/schema/tick_generated.h>

#include "shmq/serialize/decode.hpp"

SHMQ_FB_ROOT_TYPE(shmq::schema::Tick, shmq::schema::TickIdentifier);
SHMQ_FB_ROOT_TYPE(shmq::schema::Order, shmq::schema::OrderIdentifier);
