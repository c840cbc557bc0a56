#include "formats/pickle/opcodes.h"

namespace nemofs::pickle {

const char* op_name(Op op) {
  switch (op) {
    case Op::MARK: return "MARK";
    case Op::STOP: return "STOP";
    case Op::POP: return "POP";
    case Op::POP_MARK: return "POP_MARK";
    case Op::DUP: return "DUP";
    case Op::FLOAT: return "FLOAT";
    case Op::INT: return "INT";
    case Op::BININT: return "BININT";
    case Op::BININT1: return "BININT1";
    case Op::LONG: return "LONG";
    case Op::BININT2: return "BININT2";
    case Op::NONE: return "NONE";
    case Op::PERSID: return "PERSID";
    case Op::BINPERSID: return "BINPERSID";
    case Op::REDUCE: return "REDUCE";
    case Op::STRING: return "STRING";
    case Op::BINSTRING: return "BINSTRING";
    case Op::SHORT_BINSTRING: return "SHORT_BINSTRING";
    case Op::UNICODE: return "UNICODE";
    case Op::BINUNICODE: return "BINUNICODE";
    case Op::APPEND: return "APPEND";
    case Op::BUILD: return "BUILD";
    case Op::GLOBAL: return "GLOBAL";
    case Op::DICT: return "DICT";
    case Op::EMPTY_DICT: return "EMPTY_DICT";
    case Op::APPENDS: return "APPENDS";
    case Op::GET: return "GET";
    case Op::BINGET: return "BINGET";
    case Op::INST: return "INST";
    case Op::LONG_BINGET: return "LONG_BINGET";
    case Op::LIST: return "LIST";
    case Op::EMPTY_LIST: return "EMPTY_LIST";
    case Op::OBJ: return "OBJ";
    case Op::PUT: return "PUT";
    case Op::BINPUT: return "BINPUT";
    case Op::LONG_BINPUT: return "LONG_BINPUT";
    case Op::SETITEM: return "SETITEM";
    case Op::TUPLE: return "TUPLE";
    case Op::EMPTY_TUPLE: return "EMPTY_TUPLE";
    case Op::SETITEMS: return "SETITEMS";
    case Op::BINFLOAT: return "BINFLOAT";
    case Op::PROTO: return "PROTO";
    case Op::NEWOBJ: return "NEWOBJ";
    case Op::EXT1: return "EXT1";
    case Op::EXT2: return "EXT2";
    case Op::EXT4: return "EXT4";
    case Op::TUPLE1: return "TUPLE1";
    case Op::TUPLE2: return "TUPLE2";
    case Op::TUPLE3: return "TUPLE3";
    case Op::NEWTRUE: return "NEWTRUE";
    case Op::NEWFALSE: return "NEWFALSE";
    case Op::LONG1: return "LONG1";
    case Op::LONG4: return "LONG4";
    case Op::BINBYTES: return "BINBYTES";
    case Op::SHORT_BINBYTES: return "SHORT_BINBYTES";
    case Op::SHORT_BINUNICODE: return "SHORT_BINUNICODE";
    case Op::BINUNICODE8: return "BINUNICODE8";
    case Op::BINBYTES8: return "BINBYTES8";
    case Op::EMPTY_SET: return "EMPTY_SET";
    case Op::ADDITEMS: return "ADDITEMS";
    case Op::FROZENSET: return "FROZENSET";
    case Op::NEWOBJ_EX: return "NEWOBJ_EX";
    case Op::STACK_GLOBAL: return "STACK_GLOBAL";
    case Op::MEMOIZE: return "MEMOIZE";
    case Op::FRAME: return "FRAME";
    case Op::BYTEARRAY8: return "BYTEARRAY8";
    case Op::NEXT_BUFFER: return "NEXT_BUFFER";
    case Op::READONLY_BUFFER: return "READONLY_BUFFER";
  }
  return nullptr;
}

}  // namespace nemofs::pickle
