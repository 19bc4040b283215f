"""adaclip_rl.losses"""
