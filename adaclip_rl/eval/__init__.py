"""adaclip_rl.eval"""
