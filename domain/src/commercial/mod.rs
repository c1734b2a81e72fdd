//! Commercial (what the Portal sells): customers, contracts and the licence plans they carry,
//! entitlements, usage against quotas, invoices, and money.

pub mod contract;
pub mod customer;
pub mod entitlement;
pub mod invoice;
pub mod money;
pub mod usage;
